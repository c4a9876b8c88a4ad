"""Constrained decoding: which tokens a grammar allows next, so the output is valid by construction.

The grammar engine is llguidance (``guidance-ai/llguidance``, what llama.cpp and vLLM use): a
grammar (Lark syntax, with JSON schemas inlined as ``%json {...}``, ``docs/syntax.md``) and a
tokenizer give, at every step, the set of token ids that keep the output a prefix of a sentence
of the grammar. Generation (`engine.generation.request`) ANDs that set into the logits after logit_bias and
the penalties, before temperature and top_p (`engine.generation.sampling`); logprobs stay the raw model's.

    grammar = Grammar(tok, json_grammar(schema), vocab_size, eos_ids)   # compiled once per request
    m = grammar.matcher()                                                # one per choice
    allowed = m.allowed()      # bool [V]
    m.consume(token_id)        # after sampling; m.done: only EOS may follow

What gets constrained (`plan` builds the grammar of a request):

==============================  =============================================================
request                         the output must be
==============================  =============================================================
response_format json_object     one JSON object
response_format json_schema     one JSON value valid against the schema
tool_choice required            one or more calls (one with ``parallel_tool_calls: false``) of
                                the offered tools, in the format's tool syntax
                                (`tokenizer.tools`), arguments valid against each tool's
                                ``parameters``
tool_choice {function: {name}}  the same, of that function only
tool_choice auto + JSON format  a call as above, or the JSON
tool_choice none                the format's tool-call trigger token is never sampled
==============================  =============================================================

JSON is written the way ``json.dumps`` writes it (``", "`` and ``": "``, no other whitespace),
which is how Mistral's formats render tool calls and how most templates' ``tojson`` does; where
the tokenizer gives text a dummy-prefix space (sentencepiece), the JSON may start with it.

llguidance's tokenizer is built from ours (`lltokenizer`): the bytes of every id
(``Tokenizer.token_bytes``), special tokens as ``b"\\xff" + name`` (its marker for special tokens,
``docs/special_tokens.md``; grammars name them by id, ``<[5]>``), ids the tokenizer does not
have (a model's padded vocabulary) as empty, never allowed.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from npinfer.engine.errors import NpinferError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # json.dumps
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}  # `parameters` omitted


class GrammarError(NpinferError, ValueError):
    """A schema or grammar llguidance cannot compile; the message names the field."""


# --------------------------------------------------------------------------- the tokenizer
@functools.lru_cache(maxsize=8)
def lltokenizer(tok, vocab_size: int, eos: tuple[int, ...]):
    """llguidance's view of `tok` over a model vocabulary of `vocab_size` ids (cached: ~0.1 s)."""
    import llguidance

    names = {i: name for name, i in tok.special_tokens.items()}
    tokens = [b"\xff" + names[i].encode() if i in names else tok.token_bytes(i) if i < tok.vocab_size else b""
              for i in range(vocab_size)]
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(tokens):
        if b and not b.startswith(b"\xff"):
            by_bytes.setdefault(b, i)
    longest = max(map(len, by_bytes), default=1)

    def encode(text):
        """Ids of `text` continuing a longer text (how llguidance tokenizes forced bytes):
        our BPE when its bytes are the text's, else a greedy longest match."""
        if not isinstance(text, str):
            raise TypeError("text only")
        ids = tok.encode_continuation(text)
        want = text.encode("utf-8")
        if b"".join(tokens[i] for i in ids) == want:
            return ids
        ids, pos = [], 0
        while pos < len(want):
            size = next(n for n in range(min(longest, len(want) - pos), 0, -1) if want[pos:pos + n] in by_bytes)
            ids.append(by_bytes[want[pos:pos + size]])
            pos += size
        return ids

    class Vocabulary:  # what llguidance.TokenizerWrapper reads
        eos_token_id = eos[0]
        bos_token_id = tok.bos_id
        special_token_ids = sorted(names)
        __call__ = staticmethod(encode)

    vocabulary = Vocabulary()
    vocabulary.tokens = tokens
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocabulary), n_vocab=vocab_size, eos_token=list(eos))


# --------------------------------------------------------------------------- grammars
def _json(schema: dict) -> str:
    """A JSON schema as a Lark ``%json`` block, in the json.dumps style."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)


def json_grammar(schema: dict | None, lead: str = "") -> str:
    """One JSON value valid against `schema` (None: any JSON object), after an optional `lead`."""
    body = _json(schema if schema is not None else {"type": "object"})
    return f"start: {json.dumps(lead)}? body\nbody: {body}\n" if lead else f"start: body\nbody: {body}\n"


def tool_grammar(syntax, tools: list[dict], parallel: bool, json_schema: dict | None = None,
                 json_too: bool = False, json_lead: str = "") -> str:
    """Calls of `tools` in `syntax` (tokenizer.tools.ToolSyntax): one, or with `parallel` one or
    more; with `json_too`, a JSON value valid against `json_schema` (after an optional
    `json_lead`) is the alternative."""
    def params(tool):
        return tool["function"].get("parameters") or NO_ARGUMENTS

    names = [t["function"]["name"] for t in tools]
    lines = []
    if syntax.style == "mistral-json":  # [TOOL_CALLS] [{"name": ..., "arguments": ...}, ...]
        one = [{"type": "object", "properties": {"name": {"const": n}, "arguments": params(t)},
                "required": ["name", "arguments"], "additionalProperties": False} for n, t in zip(names, tools)]
        array = {"type": "array", "items": {"anyOf": one}, "minItems": 1} | ({} if parallel else {"maxItems": 1})
        lead = f"{json.dumps(syntax.lead)}? " if syntax.lead else ""
        lines.append(f"calls: <[{syntax.trigger}]> {lead}call_list")
        lines.append(f"call_list: {_json(array)}")
    else:
        if syntax.style == "mistral-args":  # [TOOL_CALLS]name[ARGS]{...}
            alternatives = [f"<[{syntax.trigger}]> {json.dumps(n)} <[{syntax.args}]> args_{k}" for k, n in enumerate(names)]
        else:  # <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>
            alternatives = [f'"<tool_call>\\n" args_{k} "\\n</tool_call>"' for k in range(len(names))]
        lines.append("call: " + " | ".join(alternatives))
        for k, (n, t) in enumerate(zip(names, tools)):
            schema = params(t) if syntax.style == "mistral-args" else {
                "type": "object", "properties": {"name": {"const": n}, "arguments": params(t)},
                "required": ["name", "arguments"], "additionalProperties": False}
            lines.append(f"args_{k}: {_json(schema)}")
        separator = '"\\n" ' if syntax.style == "hermes" else ""
        lines.append(f"calls: call ({separator}call)*" if parallel else "calls: call")
    start = "start: calls | json_body" if json_too else "start: calls"
    if json_too:
        lead = f"{json.dumps(json_lead)}? " if json_lead else ""
        lines.append(f"json_body: {lead}json_value")
        lines.append(f"json_value: {_json(json_schema if json_schema is not None else {'type': 'object'})}")
    return "\n".join([start, *lines]) + "\n"


class Grammar:
    """A grammar compiled for one tokenizer and vocabulary: make one matcher per choice."""

    def __init__(self, tok, lark: str, vocab_size: int, eos: tuple[int, ...], where: str = "grammar"):
        import llguidance

        self.lltok = lltokenizer(tok, vocab_size, tuple(eos))
        self.grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        self.vocab_size = vocab_size
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar, self.lltok)
        if is_error:
            raise GrammarError(f"{where}: cannot be enforced ({' '.join(messages[0].split())[:300]})")

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """One choice's position in the grammar."""

    def __init__(self, grammar: Grammar):
        import llguidance

        self.m = llguidance.LLMatcher(grammar.lltok, grammar.grammar, log_level=0)
        self.vocab_size = grammar.vocab_size
        self.bits = np.zeros((grammar.vocab_size + 31) // 32, dtype=np.int32)  # [ceil(V/32)], llguidance's bitmask
        if self.m.is_error():
            raise GrammarError(f"grammar: {self.m.get_error()}")

    def allowed(self) -> np.ndarray:
        """bool [V]: the tokens that keep the output in the grammar (EOS once it is complete)."""
        self.m.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        return np.unpackbits(self.bits.view(np.uint8), bitorder="little")[:self.vocab_size].astype(bool)  # [V]

    def consume(self, token_id: int) -> None:
        if not self.m.consume_token(token_id):
            raise RuntimeError(f"token {token_id} was outside the grammar: {self.m.get_error()}")

    @property
    def done(self) -> bool:
        """Complete: nothing but EOS can follow."""
        return self.m.is_stopped()


# --------------------------------------------------------------------------- a request's constraints
def plan(tok, vocab_size: int, eos: tuple[int, ...], syntax, tools: list[dict], tool_choice,
         parallel: bool, response_format: str, json_schema: dict | None) -> tuple[Grammar | None, tuple[int, ...]]:
    """(the grammar every choice must follow or None, ids never sampled) for a request.

    `tool_choice` is ``"auto"``, ``"none"``, ``"required"`` or a function name; `syntax` the chat
    format's tool syntax (None: it has none); `response_format` ``"text"``, ``"json_object"`` or
    ``"json_schema"`` (with `json_schema`).
    """
    json_wanted = response_format in ("json_object", "json_schema")
    schema = json_schema if response_format == "json_schema" else None
    lead = " " if _dummy_prefix(tok) else ""
    if tools and tool_choice not in ("auto", "none"):
        where = "tool_choice"
        if syntax is None:
            raise GrammarError(f"{where}: this model's chat format has no known tool-call syntax, "
                               "so calls cannot be enforced (use tool_choice auto)")
        chosen = tools if tool_choice == "required" else [t for t in tools if t["function"]["name"] == tool_choice]
        return Grammar(tok, tool_grammar(syntax, chosen, parallel), vocab_size, eos, where), ()
    if json_wanted:
        where = "response_format" + (".json_schema.schema" if schema is not None else "")
        if tools and tool_choice == "auto" and syntax is not None:
            lark = tool_grammar(syntax, tools, parallel, schema, json_too=True, json_lead=lead)
            return Grammar(tok, lark, vocab_size, eos, where), ()
        return Grammar(tok, json_grammar(schema, lead), vocab_size, eos, where), ()
    if tools and tool_choice == "none" and syntax is not None and syntax.trigger is not None:
        return None, (syntax.trigger,)
    return None, ()


def _dummy_prefix(tok) -> bool:
    """Does the tokenizer start text with a space of its own (sentencepiece's dummy prefix)?"""
    return b"".join(tok.token_bytes(i) for i in tok.encode("{")).startswith(b" ")
