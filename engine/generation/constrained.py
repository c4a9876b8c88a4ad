"""Constrained decoding: which tokens a grammar allows next, so the output is valid by construction.

The grammar engine is llguidance (``guidance-ai/llguidance``, what llama.cpp and vLLM use): a
grammar (Lark syntax, with JSON schemas inlined as ``%json {...}``, ``docs/syntax.md``) and a
tokenizer give, at every step, the set of token ids that keep the output a prefix of a sentence
of the grammar. Generation (`engine.generation.request`) ANDs that set into the logits after logit_bias and
the penalties, before temperature and top_p (`engine.generation.sampling`); logprobs stay the raw model's.

    grammar = Grammar(tok, json_grammar(schema), vocab_size, eos_ids)   # compiled once per request
    m = grammar.matcher()                                                # one per choice (a copy)
    allowed = m.allowed()      # bool [V]
    m.consume(token_id)        # after sampling; m.done: only EOS may follow

**Budgets.** A schema can ask for more than any grammar engine should build (``pattern:
"^a{100000}$"``, a property that requires itself). llguidance bounds its own work (`LIMITS`: the
fuel of its regex analysis at compile time and at each step, the Earley items of a step, the
lexer states, the grammar's size; each ~tens of milliseconds at most), and reports what it
refused; but much of it is done lazily, at the first tokens. So `Grammar` compiles the grammar
once, in the thread that prepares the request (never on the event loop nor in the scheduler's
worker: choices copy the compiled matcher), and then *probes* it: two walks of PROBE_STEPS
tokens through it (always the lowest allowed id, always the highest), which build the lexer
states and Earley rows the first tokens need. A grammar that fails there is a `GrammarError`
naming the field (``response_format.json_schema.schema``, or ``tools.K.function.parameters``:
each tool is compiled alone first) and llguidance's reason: a 422, at once. One that fails
later, at a token no probe reached, ends its request with the same error (`Matcher`) rather
than a 500. A schema no output within ``max_tokens`` can satisfy (``minItems: 10**9``) is not
detected: it is enforced as far as ``max_tokens`` goes (finish_reason ``length``).

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
    """A schema or grammar llguidance cannot compile (or enforce); the message names the field."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason  # llguidance's words, when it gave up


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


PROBE_STEPS = 16  # tokens of each probe walk (module docstring)


@functools.cache
def limits():
    """llguidance's resource limits (its defaults, written out; rates from its documentation)."""
    import llguidance

    return llguidance.LLParserLimits(
        initial_lexer_fuel=1_000_000,  # regex analysis at compile time (~50k/ms: ~20 ms)
        step_lexer_fuel=200_000,  # per token (~14k/ms: ~15 ms)
        step_max_items=50_000,  # Earley items per token (~20k/ms: ~2.5 ms)
        max_items_in_row=2_000,
        max_lexer_states=250_000,  # ~1-2 kB each
        max_grammar_size=500_000,  # symbols in the productions
        verbose_errors=False)  # (the parser's state is no business of the client's)


def _reason(error: str) -> str:
    """llguidance's error in one line of at most 300 characters."""
    return " ".join(error.split("<state>")[0].replace("<non-verbose/>", "").split())[:300]


class Grammar:
    """A grammar compiled (and probed) for one tokenizer and vocabulary: make one matcher per choice."""

    def __init__(self, tok, lark: str, vocab_size: int, eos: tuple[int, ...], where: str = "grammar"):
        import llguidance

        self.lltok = lltokenizer(tok, vocab_size, tuple(eos))
        self.vocab_size, self.where, self.eos = vocab_size, where, tuple(eos)
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltok,
                                                                                 limits=limits())
        if is_error:
            raise GrammarError(f"{where}: cannot be enforced ({_reason(messages[0])})")
        self.compiled = llguidance.LLMatcher(self.lltok, grammar, log_level=0, limits=limits())
        if self.compiled.is_error():
            raise GrammarError(f"{where}: cannot be enforced ({_reason(self.compiled.get_error())})")
        for pick in (min, max):
            self._probe(pick)

    def _probe(self, pick) -> None:
        """Walk PROBE_STEPS tokens, each `pick` of the allowed ids (EOS aside); a GrammarError if
        llguidance gives up on the way."""
        m = self.matcher()
        try:
            for _ in range(PROBE_STEPS):
                allowed = np.flatnonzero(m.allowed())  # [k]
                allowed = allowed[~np.isin(allowed, self.eos)]
                if m.done or not len(allowed):
                    return
                m.consume(int(pick(allowed)))
        except GrammarError as e:
            raise GrammarError(f"{self.where}: cannot be enforced ({e.reason})", e.reason) from None

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """One choice's position in the grammar: a copy of the compiled one (copying is cheap; the
    lexer's states are shared)."""

    def __init__(self, grammar: Grammar):
        self.m = grammar.compiled.deep_copy()
        self.vocab_size, self.where, self.consumed = grammar.vocab_size, grammar.where, 0
        self.bits = np.zeros((grammar.vocab_size + 31) // 32, dtype=np.int32)  # [ceil(V/32)], llguidance's bitmask

    def allowed(self) -> np.ndarray:
        """bool [V]: the tokens that keep the output in the grammar (EOS once it is complete)."""
        self.m.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        self._check()
        return np.unpackbits(self.bits.view(np.uint8), bitorder="little")[:self.vocab_size].astype(bool)  # [V]

    def consume(self, token_id: int) -> None:
        self.m.consume_token(token_id)
        self.consumed += 1
        self._check()

    def _check(self) -> None:
        """llguidance gave up (a resource limit met at a token no probe reached): the request ends
        with the field and the reason, as its compilation would have."""
        if self.m.is_error():
            reason = _reason(self.m.get_error())
            raise GrammarError(f"{self.where}: cannot be enforced past {self.consumed} generated tokens "
                               f"({reason})", reason)

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
        if len(chosen) == 1:  # its calls alone: the grammar is that tool's
            where = f"tools.{next(k for k, t in enumerate(tools) if t is chosen[0])}.function.parameters"
        else:
            _each_tool(tok, vocab_size, eos, syntax, tools, chosen, parallel)
        return Grammar(tok, tool_grammar(syntax, chosen, parallel), vocab_size, eos, where), ()
    if json_wanted:
        where = "response_format" + (".json_schema.schema" if schema is not None else "")
        if tools and tool_choice == "auto" and syntax is not None:
            _each_tool(tok, vocab_size, eos, syntax, tools, tools, parallel)
            Grammar(tok, json_grammar(schema, lead), vocab_size, eos, where)  # the JSON alone names its field
            lark = tool_grammar(syntax, tools, parallel, schema, json_too=True, json_lead=lead)
            return Grammar(tok, lark, vocab_size, eos, "tools and response_format together"), ()
        return Grammar(tok, json_grammar(schema, lead), vocab_size, eos, where), ()
    if tools and tool_choice == "none" and syntax is not None and syntax.trigger is not None:
        return None, (syntax.trigger,)
    return None, ()


def _each_tool(tok, vocab_size: int, eos: tuple[int, ...], syntax, tools: list[dict], chosen: list[dict],
               parallel: bool) -> None:
    """Compile the calls of each chosen tool alone (in the format's syntax: llguidance's limits
    depend on the context a schema is in), so a schema that cannot be enforced is named
    (``tools.K.function.parameters``) before the tools' grammar is compiled together."""
    for k, tool in enumerate(tools):
        if any(tool is c for c in chosen) and tool["function"].get("parameters"):
            Grammar(tok, tool_grammar(syntax, [tool], parallel), vocab_size, eos, f"tools.{k}.function.parameters")


def _dummy_prefix(tok) -> bool:
    """Does the tokenizer start text with a space of its own (sentencepiece's dummy prefix)?"""
    return b"".join(tok.token_bytes(i) for i in tok.encode("{")).startswith(b" ")
