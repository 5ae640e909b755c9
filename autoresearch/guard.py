"""What a proposal may touch and contain, checked before anything is trained.

Two checks, each raising :class:`GuardViolation` (a rule id and a message written for the
model) on the first violation:

- :func:`check_paths`: only the editable files may change.
- :func:`check_source`: the new source parses, imports only allow-listed modules, and uses
  nothing a training script has no business using (file, process, network, dynamic code,
  reaching into the harness, reseeding, signals, threads, exiting, native code, the
  environment, patching modules or the ``run`` object, dunder tricks).

:data:`RULES` below is the single source of truth for the rule ids and their reasons;
docs/integrity.md mirrors it. The guard is a static, best-effort tripwire that turns the
obvious shortcuts into recorded, explained rejections before a run is spent. It is not a
sandbox: the harness's separate process, its own data loading and its own metric are what the
integrity of a measurement rests on.

Over 400 lines on purpose: one rule table and one AST walk, kept together so a reader sees
every rule the guard enforces in one place.
"""

from __future__ import annotations

import ast
import posixpath
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from autoresearch import pysource


class GuardViolation(Exception):
    """A proposal broke a rule. ``rule`` is a short id; the message is written for the model."""

    def __init__(self, rule: str, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Rule:
    id: str
    forbids: str  # what the rule rejects, completing "... is not allowed"
    why: str  # the reason, addressed to the model


# The rule list: one line of what, one of why. docs/integrity.md mirrors this table.
RULES: tuple[Rule, ...] = (
    Rule("path", "changing a file other than the editable ones (absolute paths, '..', others)",
         "the harness, the data, the evaluation and the orchestrator's files are outside the "
         "experiment; only the editable files may change."),
    Rule("syntax", "source that does not parse",
         "the file must be valid Python before anything is trained."),
    Rule("import", "importing a module outside the allow-list, or a star import",
         "a training script needs only torch, numpy and a few standard modules "
         "(allowed: {allowed}); star imports hide names from this check."),
    Rule("file", "file access (open, pathlib, io, os file operations, torch.save/load, "
         "np.load/save, tofile, pickle, ...)",
         "the harness supplies the data through run.get_batch and measures the returned "
         "model itself; checkpoints, caches and reading the validation split are off limits."),
    Rule("process", "starting processes or running system commands (subprocess, os.system, "
         "os.fork/exec*/spawn*, pty, ...)",
         "train() runs inside the trusted harness and may not act on the machine."),
    Rule("network", "network access (socket, urllib, http, requests, ssl, ftplib, "
         "torch.hub, torch.distributed, ...)",
         "experiments run offline: nothing may be downloaded or sent."),
    Rule("dynamic", "dynamic code (exec, eval, compile, __import__, importlib, builtins, "
         "globals/locals/vars, getattr/setattr with computed names, modules passed as values)",
         "code built at run time cannot be checked; write the code out plainly."),
    Rule("harness", "reaching into the harness or the interpreter (import autoresearch, "
         "relative imports, sys, inspect, gc, traceback, frames, breakpoint)",
         "the harness owns the data, the clock and the metric; train() only gets `run`."),
    Rule("seed", "seeding or reseeding a random generator with anything but run.seed "
         "(torch.manual_seed(0), random.seed(), np.random.seed(1), g.manual_seed(42), "
         "set_rng_state, ...)",
         "the harness seeds everything from run.seed so that the seeds of a measurement are "
         "independent runs; a fixed seed hides the noise the keep rule measures. Deriving a "
         "seed from run.seed is fine: g.manual_seed(run.seed + 1)."),
    Rule("signal", "signal handlers and exit hooks (signal, atexit, faulthandler)",
         "the harness stops runs at the budget; handlers could ignore or delay that."),
    Rule("thread", "threads and processes of its own (threading, _thread, concurrent, "
         "multiprocessing, torch.multiprocessing, torch.utils.data workers)",
         "work outside the main thread escapes the budget clock and the harness's control; "
         "use run.get_batch for data."),
    Rule("exit", "ending the process or swallowing its stop (exit, quit, sys.exit, os._exit, "
         "os.kill, raise SystemExit, bare except / except BaseException)",
         "train() must return a model or raise an ordinary exception; the harness decides "
         "when the run ends."),
    Rule("native", "native code (ctypes, cffi, torch.utils.cpp_extension, torch._C, "
         "torch.cuda.jiterator, load_library, numpy.ctypeslib)",
         "native code bypasses every other check."),
    Rule("env", "reading or changing the environment (os.environ, os.putenv, os.getenv)",
         "configuration comes from the harness through `run`; the environment belongs to "
         "the orchestrator."),
    Rule("monkeypatch", "assigning or deleting attributes of imported modules or of classes "
         "reached through type() (time.time = ..., F.cross_entropy = ..., setattr(torch, ...)),"
         " global module hooks, torch.library, torch function/dispatch modes",
         "the harness evaluates with the same modules in the same process; patching them could "
         "change the metric. Performance flags are fine: torch.backends.*, "
         "torch._dynamo.config.*, torch._inductor.config.*, torch.set_*(...)."),
    Rule("run", "writing, deleting or replacing attributes of `run`, or reading its private "
         "(_underscore) attributes",
         "`run` is the harness's interface: read run.device, run.seed, run.vocab_size, "
         "run.seq_len and call run.get_batch, run.time_left, run.tokens_left, run.log."),
    Rule("private", "private (_underscore) modules and functions of torch and numpy, beyond "
         "torch._dynamo, torch._inductor.config, torch._functorch.config and torch._foreach_*",
         "they are internals the other rules cannot vouch for: several of them read files or "
         "run commands. Use the public API."),
    Rule("dunder", "dunder attributes and names beyond __init__, __name__, __qualname__, "
         "__class__, __doc__, __version__ (e.g. __dict__, __subclasses__, __globals__, "
         "__builtins__, __file__)",
         "these reach objects (modules, builtins, the harness) that plain code cannot."),
)
RULE_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}

# ----------------------------------------------------------------------------------------------
# Tables the rules read.

# Top-level modules a training script may import; submodules follow their root, except where
# DENIED below says otherwise.
ALLOWED_IMPORTS: frozenset[str] = frozenset({
    "__future__", "abc", "bisect", "collections", "contextlib", "copy", "dataclasses", "enum",
    "functools", "heapq", "itertools", "json", "math", "numbers", "numpy", "random", "re",
    "statistics", "string", "time", "typing", "warnings", "torch",
})

# Qualified names (modules, or names inside modules) and the rule they break. The longest
# matching prefix (whole dotted segments) wins; a key ending in "*" matches as a plain string
# prefix (os.exec* = execv, execvp, ...).
DENIED: dict[str, str] = {
    # file
    "os": "file", "io": "file", "_io": "file", "pathlib": "file", "shutil": "file",
    "tempfile": "file", "glob": "file", "fnmatch": "file", "pickle": "file", "_pickle": "file",
    "shelve": "file", "marshal": "file", "dbm": "file", "sqlite3": "file", "csv": "file",
    "gzip": "file", "zipfile": "file", "tarfile": "file", "bz2": "file", "lzma": "file",
    "mmap": "file", "fileinput": "file", "linecache": "file", "filecmp": "file",
    "codecs": "file", "tokenize": "file", "logging": "file", "posixpath": "file",
    "ntpath": "file", "genericpath": "file", "h5py": "file", "safetensors": "file",
    "contextlib.chdir": "file",
    "torch.save": "file", "torch.load": "file", "torch.serialization": "file",
    "torch.from_file": "file", "torch.utils.tensorboard": "file", "torch.onnx": "file",
    "torch.jit.save": "file", "torch.jit.load": "file", "torch.export.save": "file",
    "torch.export.load": "file", "torch.package": "file",
    "torch.cuda.memory._dump_snapshot": "file",
    "torch.profiler.tensorboard_trace_handler": "file",
    "numpy.rec.fromfile": "file", "numpy.core.records.fromfile": "file",
    "numpy.load": "file", "numpy.save": "file", "numpy.savez": "file",
    "numpy.savez_compressed": "file", "numpy.loadtxt": "file", "numpy.savetxt": "file",
    "numpy.genfromtxt": "file", "numpy.fromfile": "file", "numpy.fromregex": "file",
    "numpy.memmap": "file", "numpy.DataSource": "file", "numpy.lib.npyio": "file",
    "numpy.lib.format": "file", "numpy.lib.DataSource": "file",
    # process
    "os.system": "process", "os.popen": "process", "os.fork*": "process",
    "os.exec*": "process", "os.spawn*": "process", "os.posix_spawn*": "process",
    "os.startfile": "process", "os.wait*": "process",
    "subprocess": "process", "pty": "process", "pexpect": "process", "sh": "process",
    "resource": "process", "platform": "process", "pdb": "process", "webbrowser": "process",
    "posix": "process", "nt": "process", "numpy.f2py": "process", "numpy.distutils": "process",
    "torch.utils.collect_env": "process", "torch.testing": "process",
    # network
    "socket": "network", "_socket": "network", "ssl": "network", "urllib": "network",
    "urllib3": "network", "http": "network", "requests": "network", "httpx": "network",
    "aiohttp": "network", "ftplib": "network", "smtplib": "network", "poplib": "network",
    "imaplib": "network", "telnetlib": "network", "nntplib": "network", "xmlrpc": "network",
    "asyncio": "network", "selectors": "network", "select": "network",
    "socketserver": "network", "websocket": "network", "websockets": "network",
    "paramiko": "network", "wandb": "network",
    "torch.hub": "network", "torch.utils.model_zoo": "network", "torch.distributed": "network",
    # dynamic code
    "importlib": "dynamic", "builtins": "dynamic", "code": "dynamic", "codeop": "dynamic",
    "runpy": "dynamic", "types": "dynamic", "pkgutil": "dynamic", "zipimport": "dynamic",
    "ast": "dynamic", "pydoc": "dynamic",
    "typing.get_type_hints": "dynamic", "typing.ForwardRef": "dynamic",
    # the harness and the interpreter
    "autoresearch": "harness", "sys": "harness", "inspect": "harness", "gc": "harness",
    "traceback": "harness", "__main__": "harness", "site": "harness",
    "sysconfig": "harness", "tracemalloc": "harness",
    # signals and exit hooks
    "signal": "signal", "_signal": "signal", "atexit": "signal", "faulthandler": "signal",
    # threads and processes of its own
    "threading": "thread", "_thread": "thread", "concurrent": "thread",
    "multiprocessing": "thread", "_multiprocessing": "thread", "sched": "thread",
    "torch.multiprocessing": "thread", "torch.utils.data": "thread",
    # ending the process
    "sys.exit": "exit", "os._exit": "exit", "os.abort": "exit", "os.kill": "exit",
    "os.killpg": "exit",
    # native code
    "ctypes": "native", "_ctypes": "native", "cffi": "native", "numba": "native",
    "torch.utils.cpp_extension": "native", "torch._C": "native", "numpy.ctypeslib": "native",
    # environment
    "os.environ": "env", "os.environb": "env", "os.putenv": "env", "os.unsetenv": "env",
    "os.getenv": "env", "os.getenvb": "env",
    # global patches of torch behaviour
    "torch.overrides": "monkeypatch", "torch.utils._python_dispatch": "monkeypatch",
    "torch.nn.modules.module.register_module_*": "monkeypatch",
    "torch.nn.modules.module._global*": "monkeypatch", "torch.library": "monkeypatch",
    "torch.cuda.jiterator": "native",
}

# Attribute names that, reached through an allowed module (torch.os, np.sys), lead into a
# denied module: the rest of the chain is checked as if it were imported directly.
ESCAPES: frozenset[str] = frozenset({
    "os", "sys", "subprocess", "socket", "builtins", "importlib", "ctypes", "pickle", "shutil",
    "pathlib", "inspect", "gc", "threading", "multiprocessing", "traceback", "marshal", "runpy",
    "urllib", "http", "io", "signal", "atexit", "tempfile",
})

# Builtin names and the rule they break (flagged wherever they are referenced, not only called).
BUILTINS: dict[str, str] = {
    "open": "file", "exec": "dynamic", "eval": "dynamic", "compile": "dynamic",
    "__import__": "dynamic", "globals": "dynamic", "locals": "dynamic", "vars": "dynamic",
    "breakpoint": "harness", "exit": "exit", "quit": "exit", "help": "process",
}
ATTR_FUNCS = frozenset({"getattr", "setattr", "delattr", "hasattr"})

# Attribute names flagged on any object.
ATTRS: dict[str, str] = {
    "tofile": "file", "from_file": "file", "fromfile": "file", "dump": "file",
    "savetxt": "file", "loadtxt": "file", "genfromtxt": "file", "fromregex": "file",
    "export_chrome_trace": "file",
    "export_stacks": "file", "export_memory_timeline": "file", "load_library": "native",
    "tb_frame": "harness", "tb_next": "harness", "f_back": "harness", "f_globals": "harness",
    "f_locals": "harness", "f_builtins": "harness", "f_code": "harness", "gi_frame": "harness",
    "gi_code": "harness", "cr_frame": "harness", "cr_code": "harness", "ag_frame": "harness",
    "ag_code": "harness", "co_code": "harness", "co_consts": "harness",
}
ATTR_PREFIXES: dict[str, str] = {"register_module_": "monkeypatch"}

# Private parts of torch and numpy that training code does use (performance flags, the
# foreach kernels of hand-written optimizers); any other _underscore segment breaks "private".
PRIVATE_OK: tuple[str, ...] = (
    "torch._dynamo", "torch._inductor.config", "torch._functorch.config", "torch._foreach_",
)
PRIVATE_ROOTS = frozenset({"torch", "numpy"})

SEED_CALLS = frozenset({
    "manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state", "set_rng_state_all",
    "setstate", "set_state",
})
SEED_CONSTRUCTORS = frozenset({
    "Random", "RandomState", "default_rng", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937",
    "Philox", "SFC64",
})
# Module attributes that may be assigned: performance flags, read by torch at call time.
PATCHABLE: tuple[str, ...] = (
    "torch.backends.", "torch._dynamo.config.", "torch._inductor.config.",
    "torch._functorch.config.",
)
DUNDER_ATTRS_OK = frozenset({
    "__init__", "__name__", "__qualname__", "__class__", "__doc__", "__version__",
})
DUNDER_NAMES_OK = frozenset({"__name__", "__doc__", "__debug__"})
DUNDER_STORES_OK = frozenset({"__slots__", "__all__"})
OVERRIDE_DEFS = frozenset({"__torch_function__", "__torch_dispatch__"})
STOP_EXCEPTIONS = frozenset({"BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit"})
RUN_PUBLIC = ("device", "seed", "vocab_size", "seq_len", "get_batch", "time_left",
              "tokens_left", "log")


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def classify(qualname: str) -> str | None:
    """The rule a qualified name (``os.system``, ``torch.save``, ``torch.os.getcwd``) breaks,
    or None."""
    parts = qualname.split(".")
    for i, seg in enumerate(parts[1:], start=1):
        if seg in ESCAPES:
            return classify(".".join(parts[i:])) or "import"
    best: tuple[int, str] | None = None
    for key, rule in DENIED.items():
        if key.endswith("*"):
            hit = qualname.startswith(key[:-1])
        else:
            hit = qualname == key or qualname.startswith(key + ".")
        if hit and (best is None or len(key) > best[0]):
            best = (len(key), rule)
    if best:
        return best[1]
    if parts[0] in PRIVATE_ROOTS and any(
        seg.startswith("_") and not _dunder(seg) for seg in parts[1:]
    ) and not qualname.startswith(PRIVATE_OK) and not any(
        ok.startswith(qualname + ".") for ok in PRIVATE_OK  # torch._inductor on the way
    ):
        return "private"
    return None


# ----------------------------------------------------------------------------------------------
# Paths.


def _normalize(path: str) -> tuple[str | None, str]:
    """(normalized relative path, "") or (None, why it is refused)."""
    if not path or "\x00" in path:
        return None, "is empty or contains a NUL byte"
    p = path.replace("\\", "/")
    if p.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", p):
        return None, "is absolute; give the path relative to the workspace"
    if ".." in p.split("/"):
        return None, "contains '..'"
    return posixpath.normpath(p), ""


def check_paths(paths: Iterable[str], editable: Collection[str]) -> None:
    """Raise ``GuardViolation("path", ...)`` unless every path is one of ``editable``."""
    allowed = {n for n, _ in map(_normalize, editable) if n is not None}
    names = ", ".join(sorted(allowed)) or "(none)"
    for p in paths:
        norm, why = _normalize(p)
        if norm is None:
            raise GuardViolation("path", f"{p!r} {why}; only {names} may change [path]")
        if norm not in allowed:
            raise GuardViolation(
                "path", f"{p!r} is not editable; only {names} may change. The harness, data "
                f"and evaluation are fixed [path]"
            )


# ----------------------------------------------------------------------------------------------
# Source.


def _message(path: str, line: int | None, snippet: str, rule_id: str, detail: str) -> str:
    rule = RULE_BY_ID[rule_id]
    why = rule.why.replace("{allowed}", ", ".join(sorted(ALLOWED_IMPORTS - {"__future__"})))
    where = f"{path} line {line}" if line else path
    extra = f" ({detail})" if detail and detail != snippet else ""
    return f"{where}: `{snippet}`{extra}: {rule.forbids} is not allowed [{rule_id}]. {why}"


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, source: str, tree: ast.Module) -> None:
        self.path = path
        self.source = source
        self.found: list[tuple[int, int, int, GuardViolation]] = []
        self.bindings: dict[str, str] = {}  # local name -> qualified name it stands for
        self.modules: set[str] = set()  # names bound by `import x` (certainly modules)
        self.run_names: set[str] = {"run"}
        self.class_names: set[str] = set()  # names bound to type(x) or x.__class__
        self.strings: dict[str, str] = {}  # module-level NAME = "constant"
        self.parents: dict[ast.AST, ast.AST] = {}
        self._prepare(tree)

    # -- pre-pass: imports, aliases, the run parameter -----------------------------------------

    def _prepare(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.bindings[a.asname] = a.name
                        self.modules.add(a.asname)
                    else:
                        root = a.name.split(".")[0]
                        self.bindings[root] = root
                        self.modules.add(root)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        self.bindings[a.asname or a.name] = f"{node.module}.{a.name}"
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "train":
                args = stmt.args.posonlyargs + stmt.args.args
                if args:
                    self.run_names.add(args[0].arg)
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)):
                self.strings[stmt.targets[0].id] = stmt.value.value
        defs = {node.name: [a.arg for a in node.args.posonlyargs + node.args.args]
                for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        # simple aliases (F = torch.nn.functional, r = run, a helper's parameter that is given
        # run, cls = type(x)), to a fixed point
        changed = True
        while changed:
            changed = False
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    for param in self._params_given_run(node, defs):
                        if param not in self.run_names:
                            self.run_names.add(param)
                            changed = True
                for target, value in self._alias_pairs(node):
                    if self._is_class_of(value) and target not in self.class_names:
                        self.class_names.add(target)
                        changed = True
                    if isinstance(value, ast.Name) and value.id in self.run_names:
                        if target not in self.run_names:
                            self.run_names.add(target)
                            changed = True
                        continue
                    qual = self._qualname(value)
                    if qual is not None and self.bindings.get(target) != qual:
                        self.bindings[target] = qual
                        if isinstance(value, ast.Name) and value.id in self.modules:
                            self.modules.add(target)
                        changed = True

    def _params_given_run(self, call: ast.Call, defs: dict[str, list[str]]) -> list[str]:
        """Parameters of a function defined in the file that a call hands ``run`` to."""
        func = call.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else None)
        params = defs.get(name or "")
        if params is None:
            return []
        if isinstance(func, ast.Attribute) and params[:1] == ["self"]:
            params = params[1:]
        found = [params[i] for i, a in enumerate(call.args)
                 if i < len(params) and isinstance(a, ast.Name) and a.id in self.run_names]
        found += [k.arg for k in call.keywords
                  if k.arg in params and isinstance(k.value, ast.Name)
                  and k.value.id in self.run_names]
        return found

    def _is_class_of(self, node: ast.AST) -> bool:
        """``type(x)``, ``x.__class__`` or a name bound to one of them."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
            node.func.id == "type" and len(node.args) == 1
        ):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "__class__":
            return True
        return isinstance(node, ast.Name) and node.id in self.class_names

    def _alias_pairs(self, node: ast.AST) -> list[tuple[str, ast.expr]]:
        if (isinstance(node, ast.For) and isinstance(node.target, ast.Name)
                and isinstance(node.iter, (ast.Tuple, ast.List, ast.Set))
                and node.target.id not in self.bindings):
            # `for m in (torch.nn.functional, ...)`: m stands for the first thing that may
            # not be patched (a module attribute assignment through m is then reported)
            for elt in node.iter.elts:
                qual = self._qualname(elt)
                if qual is not None and not qual.startswith(PATCHABLE):
                    return [(node.target.id, elt)]
            return []
        if isinstance(node, ast.Assign):
            return [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        if (isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None
                and isinstance(node.target, ast.Name)):
            return [(node.target.id, node.value)]
        return []

    def _qualname(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.bindings.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _root(self, node: ast.AST) -> ast.AST:
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
            node = node.value
        if isinstance(node, ast.NamedExpr):
            return self._root(node.value)
        return node

    # -- reporting --------------------------------------------------------------------------

    def flag(self, node: ast.AST, rule: str, detail: str = "", *, late: bool = False) -> None:
        line = getattr(node, "lineno", None)
        seg = ast.get_source_segment(self.source, node) or type(node).__name__
        seg = seg.strip().splitlines()[0] if seg.strip() else seg
        if len(seg) > 70:
            seg = seg[:67] + "..."
        msg = _message(self.path, line, seg, rule, detail)
        # import statements sort after uses: `import os; os.system()` reports `process`
        key = (1 if late else 0, line or 0, getattr(node, "col_offset", 0))
        self.found.append((*key, GuardViolation(rule, msg, line=line)))

    # -- imports ----------------------------------------------------------------------------

    def _check_import(self, node: ast.AST, qual: str) -> None:
        rule = classify(qual)
        if rule is None and qual.split(".")[0] not in ALLOWED_IMPORTS:
            rule = "import"
        if rule is not None:
            self.flag(node, rule, qual, late=True)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._check_import(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "harness", "relative import", late=True)
            return
        module = node.module or ""
        for a in node.names:
            if a.name == "*":
                self._check_import(node, module)
                self.flag(node, "import", "star import", late=True)
            else:
                self._check_import(node, f"{module}.{a.name}")

    # -- names and attributes ------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        parent = self.parents.get(node)
        if name in self.run_names and not self._run_use_ok(node, parent):
            self.flag(node, "run", "run may only be read as run.<attribute>, passed to a "
                      "function, or given another name")
        if name in self.bindings:
            if name in self.modules and not self._module_use_ok(node, parent):
                self.flag(node, "dynamic", f"module {self.bindings[name]} used as a value")
        elif name in BUILTINS:
            self.flag(node, BUILTINS[name])
        elif name in ATTR_FUNCS:
            if not (isinstance(parent, ast.Call) and parent.func is node):
                self.flag(node, "dynamic", f"{name} used as a value")
        elif _dunder(name):
            ok = DUNDER_STORES_OK if isinstance(node.ctx, ast.Store) else DUNDER_NAMES_OK
            if name not in ok:
                self.flag(node, "dynamic" if name == "__builtins__" else "dunder")

    def _run_use_ok(self, node: ast.Name, parent: ast.AST | None) -> bool:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            return True  # rebinding the name (store into run's attributes is checked apart)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return True
        if isinstance(parent, ast.keyword):
            return True
        if isinstance(parent, ast.Call) and node in parent.args:
            func = parent.func
            return not (isinstance(func, ast.Name) and func.id in ("type", "id", "vars", "dir"))
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and (
            parent.value is node
        ):
            return True  # an alias, tracked by the pre-pass
        return isinstance(parent, ast.Compare | ast.Return)

    def _module_use_ok(self, node: ast.Name, parent: ast.AST | None) -> bool:
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return True
        if isinstance(node.ctx, ast.Store):  # rebinding the name
            return True
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and (
            parent.value is node
        ):
            return True  # an alias, tracked by the pre-pass
        return (
            isinstance(parent, ast.Call)
            and isinstance(parent.func, ast.Name)
            and parent.func.id in ATTR_FUNCS
            and bool(parent.args)
            and parent.args[0] is node
        )

    def _check_attr_name(self, node: ast.AST, obj: ast.expr, attr: str, store: bool) -> None:
        """Checks shared by ``obj.attr`` and ``getattr(obj, "attr")``; the most specific first."""
        root = self._root(obj)
        if isinstance(root, ast.Name) and root.id in self.run_names:
            if store:
                self.flag(node, "run", "assignment to an attribute of run")
            elif attr.startswith("_") and obj is root:
                self.flag(node, "run", f"private attribute; public: {', '.join(RUN_PUBLIC)}")
        base = self._qualname(obj)
        if base is not None:
            qual = f"{base}.{attr}"
            denied = classify(qual)
            if denied is not None:
                self.flag(node, denied, qual)
            elif store and isinstance(root, ast.Name) and not qual.startswith(PATCHABLE):
                self.flag(node, "monkeypatch", f"assignment to {qual}")
        elif store and self._through_a_class(obj):
            self.flag(node, "monkeypatch", "assignment to a class reached through type() or "
                      "__class__")
        if attr in ATTRS:
            self.flag(node, ATTRS[attr])
        for prefix, rule in ATTR_PREFIXES.items():
            if attr.startswith(prefix):
                self.flag(node, rule)
        if _dunder(attr) and attr not in DUNDER_ATTRS_OK:
            self.flag(node, "dynamic" if attr in ("__builtins__", "__import__") else "dunder")

    def _through_a_class(self, obj: ast.AST) -> bool:
        while True:
            if self._is_class_of(obj):
                return True
            if isinstance(obj, (ast.Attribute, ast.Subscript, ast.Starred)):
                obj = obj.value
            elif isinstance(obj, ast.Call):
                obj = obj.func
            else:
                return False

    def visit_Attribute(self, node: ast.Attribute) -> None:
        store = isinstance(node.ctx, (ast.Store, ast.Del))
        self._check_attr_name(node, node.value, node.attr, store)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # run.x[...] = ... mutates the harness's object through an attribute
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            root = self._root(node)
            if isinstance(root, ast.Name) and root.id in self.run_names:
                self.flag(node, "run", "assignment into run")
            elif isinstance(root, ast.Name) and root.id in self.bindings:
                qual = self._qualname(node.value)
                if qual is None or classify(qual) is None:  # else the attribute is reported
                    self.flag(node, "monkeypatch", f"assignment into {qual or root.id}")
        self.generic_visit(node)

    # -- calls ------------------------------------------------------------------------------

    def _mentions_run_seed(self, node: ast.Call) -> bool:
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Attribute) and sub.attr == "seed"
                    and isinstance(sub.value, ast.Name) and sub.value.id in self.run_names):
                return True
        return False

    def _literal(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in self.strings:
            return self.strings[node.id]
        return None

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTR_FUNCS and func.id not in self.bindings:
            self._check_attr_call(node, func.id)
        # seeding
        last = None
        if isinstance(func, ast.Attribute):
            last = func.attr
        elif isinstance(func, ast.Name) and func.id in self.bindings:
            last = self.bindings[func.id].rsplit(".", 1)[-1]
        seeds = last in SEED_CALLS or (
            last in SEED_CONSTRUCTORS and bool(node.args or node.keywords)
        )
        if seeds and not self._mentions_run_seed(node):
            self.flag(node, "seed")
        self.generic_visit(node)

    def _check_attr_call(self, node: ast.Call, fname: str) -> None:
        if len(node.args) < 2:
            return
        obj, name_node = node.args[0], node.args[1]
        name = self._literal(name_node)
        if name is None:
            if not (isinstance(obj, ast.Name) and obj.id == "self" and "self" not in self.bindings):
                self.flag(node, "dynamic", f"{fname} with a computed attribute name")
            return
        self._check_attr_name(node, obj, name, store=fname in ("setattr", "delattr"))

    # -- statements -------------------------------------------------------------------------

    def _stop_exception(self, node: ast.expr | None) -> bool:
        if isinstance(node, ast.Call):
            node = node.func
        if isinstance(node, ast.Tuple):
            return any(self._stop_exception(e) for e in node.elts)
        return isinstance(node, ast.Name) and node.id in STOP_EXCEPTIONS

    def visit_Raise(self, node: ast.Raise) -> None:
        if self._stop_exception(node.exc):
            self.flag(node, "exit")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None or self._stop_exception(node.type):
            self.flag(node, "exit", "catch Exception instead")
        self.generic_visit(node)

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in OVERRIDE_DEFS:
            self.flag(node, "monkeypatch", node.name)
        self.generic_visit(node)

    visit_FunctionDef = _visit_def
    visit_AsyncFunctionDef = _visit_def


def find_violations(path: str, source: str) -> list[GuardViolation]:
    """Every violation in ``source``, the one :func:`check_source` raises first."""
    try:
        tree = pysource.parse(source, filename=path)
    except SyntaxError as e:
        line = f" line {e.lineno}" if e.lineno else ""
        msg = f"{path}{line}: syntax error: {e.msg} [syntax]. {RULE_BY_ID['syntax'].why}"
        return [GuardViolation("syntax", msg, line=e.lineno)]
    except ValueError as e:  # e.g. NUL bytes
        return [GuardViolation("syntax", f"{path}: cannot parse: {e} [syntax]")]
    checker = _Checker(path, source, tree)
    checker.visit(tree)
    checker.found.sort(key=lambda f: f[:3])
    return [v for *_, v in checker.found]


def check_source(path: str, source: str) -> None:
    """Raise :class:`GuardViolation` for the first thing ``source`` may not do (by line;
    a use such as ``os.system`` is reported before the import that made it possible)."""
    found = find_violations(path, source)
    if found:
        raise found[0]
