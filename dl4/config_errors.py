"""Every config mistake as one line: ``dl4: error: <key>: <what was given>; <what is expected>``, exit status 2,
before any run is created.

jsonargparse reports a mistake in 4 to 17 lines (the Union's subtypes, the value's Python type, the nested
parser keys), and the last of them rarely names what to fix. ``explain`` reads its message and says the key (the
dotted path a config or a flag uses), what was given and what is expected: the type, or the valid names with the
closest one suggested. YAML syntax errors name the file, line and column; LightningCLI's top-level
``optimizer:``/``lr_scheduler:`` keys (which dl4 does not read) say where they go now. ``DL4_FULL_ERRORS=1`` adds
the parser's own message below the line.
"""

import difflib
import importlib
import os
import re
from pathlib import Path

import yaml

from dl4.errors import ConfigError

FULL = "DL4_FULL_ERRORS"
OLD_KEYS = ("optimizer", "lr_scheduler")


def with_full_text(line: str, full: str) -> str:
    if os.environ.get(FULL) == "1":
        return f"{line}\nthe parser's message:\n{full}"
    return f"{line} ({FULL}=1 shows the parser's message)"


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def config_files(args: list[str]) -> list[str]:
    """The ``--config``/``-c`` files named in a command line."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_before_parsing(args: list[str]) -> None:
    """What jsonargparse would report badly, checked first: a missing config file, YAML that does not parse (file,
    line, column), and LightningCLI's top-level optimiser keys in a file or a flag."""
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--config {name}: no such file (the experiments are configs/*.yaml; "
                              "`dl4 --help` lists them)")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark else name
            raise ConfigError(f"{where}: not valid YAML: {err.problem or err.context} (check the indentation of "
                              "this line and the one above: a key's value is indented under it)") from None
        for key in OLD_KEYS if isinstance(config, dict) else ():
            if key in config:
                raise ConfigError(f"{name}: the top-level {key}: is LightningCLI's key, which dl4 does not read: "
                                  f"move it under model.init_args ({where_now(key)})")
    for arg in args:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if key.split(".")[0] in OLD_KEYS:
            new = "--model.init_args." + arg[2:]
            raise ConfigError(f"{arg.split('=')[0]}: dl4 reads the optimiser from the model: write {new} "
                              f"({where_now(key.split('.')[0])})")


def where_now(key: str) -> str:
    gan = "d_optimizer and g_optimizer" if key == "optimizer" else "d_lr_scheduler and g_lr_scheduler"
    return f"model.init_args.{key}; the GAN's are {gan}"


def explain(message: str, option_keys, args: list[str]) -> str:
    """jsonargparse's message as dl4's one line."""
    first = message.strip().splitlines()[0] if message.strip() else message
    if m := re.match(r"unrecognized arguments: (\S+)", first):
        key = m.group(1).split("=", 1)[0].lstrip("-")
        close = suggest(key, option_keys)
        return with_full_text(f"--{key}: no such option{close.replace('mean ', 'mean --')}", message)
    if m := re.search(r"does not accept (?:option|nested key)s? '([^']+)'", message):
        key = m.group(1)
        return with_full_text(f"{source(key, args)}{key}: no such key{suggest(key, option_keys)}", message)
    if m := re.match(r"the following arguments are required: (\S+)", first):
        keys = [k.split(".", 1)[-1] for k in m.group(1).split(",")]
        return with_full_text(f"{', '.join(keys)}: required (give --config configs/<experiment>.yaml, or "
                              f"--{keys[0]}=<class name>)", message)
    if m := re.match(r"argument subcommand: invalid choice: '([^']*)'", first):
        commands = ["fit", "validate", "test", "predict", "sweep", "data"]
        return with_full_text(f"{m.group(1)!r} is not a dl4 command: {', '.join(commands)}"
                              f"{suggest(m.group(1), commands)}", message)
    if first.startswith("Problems parsing config"):
        return with_full_text(f"a config does not parse: {' '.join(message.split())[24:]}", message)
    if first.startswith('Parser key "'):
        line = nested_key_error(message)
        return with_full_text(source(line.split(":")[0], args) + line, message)
    return with_full_text(first, message)


def source(key: str, args: list[str]) -> str:
    """``<file>: `` when the key's last part is written in a config file and not given as a flag."""
    name = key.split(".")[-1]
    flags = [a[2:].split("=")[0] for a in args if a.startswith("--") and a != "--config"]
    if any(key.startswith(f) or f.startswith(key) for f in flags):
        return ""
    files = [f for f in config_files(args) if re.search(rf"\b{re.escape(name)}\s*:", Path(f).read_text())]
    return f"{files[-1]}: " if files else ""


def nested_key_error(message: str) -> str:
    """``Parser key "model": ... Problem with given class_path 'X': ... Parser key "iw_samples": Expected ...`` as
    ``model.init_args.iw_samples: got 'abc'; expected int``."""
    path, cls, reasons, given = [], None, [], None
    for line in message.splitlines():
        text = line.strip().lstrip("- ").strip()
        if m := re.match(r'Parser key "([^"]+)"', text):
            path.append(m.group(1))
        elif m := re.match(r"Problem with given class_path '([^']+)'", text):
            path.append("init_args")
            cls = m.group(1)
        elif m := re.match(r"Given value: (.*)", text):
            given = given or m.group(1)
        elif text and not text.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value type",
                                           "Expected a <class 'NoneType'>")):
            reasons.append(text)
    key = ".".join(path)
    # the most specific reason: an unknown argument, an unknown class, a wrong type; else the first one
    specific = [r for r in reasons if re.match(r"Option '|Expected a dot import|Import path|No module|Expected a <", r)]
    reason = (specific or reasons or ["not accepted"])[0]
    if m := re.match(r"Option '([^']+)' is not accepted", reason):
        name = m.group(1)
        names = class_arguments(cls)
        hint = suggest(name, names) or (f"; its arguments: {', '.join(names)}" if names else "")
        return f"{key}.{name}: no such argument of {cls}{hint}"
    if m := re.match(r"Expected a (?:dot import path string|class path).*?: (\S+)", reason) or \
            re.match(r"Import path (\S+) does not correspond", reason) or re.match(r"No module named '?([^' ]+)", reason):
        name = m.group(1).rstrip(".,")
        names = known_classes(key)
        return (f"{key}.class_path: '{name}' is not one of dl4's {'models' if key == 'model' else 'datamodules'}"
                f"{': ' + ', '.join(names) if names else ''}{suggest(name, names)}")
    if m := re.match(r"Expected a typing\.Literal\[(.*)\](?:\. Got value: (.*))?", reason):
        choices = [c.strip().strip("'\"") for c in m.group(1).split(",")]
        value = m.group(2) if m.group(2) is not None else given
        return f"{key}: got {value!r}; expected one of {', '.join(choices)}{suggest(str(value), choices)}"
    if m := re.match(r"Expected a <class '([^']+)'>\. Got value: (.*)", reason):
        return f"{key}: got {m.group(2)!r}; expected {m.group(1)}"
    if m := re.match(r"Expected a <class '([^']+)'>", reason):
        return f"{key}: got {given!r}; expected {m.group(1)}{' or null' if 'NoneType' in message else ''}"
    return f"{key}: {reason}"


def class_arguments(class_path: str | None) -> list[str]:
    """The init arguments jsonargparse accepts for a class (its own and those it passes on as ``**kwargs``)."""
    if not class_path:
        return []
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls)
        return sorted({k.split(".")[0] for k in parser.get_defaults().keys()})
    except Exception:  # an unimportable class was reported as such already; no suggestion then
        return []


def known_classes(key: str) -> list[str]:
    """The short names a config can give for ``model`` and ``data``."""
    package = {"model": "lightning_models", "data": "datamodules"}.get(key)
    if package is None:
        return []
    module = importlib.import_module(package)
    import lightning as L

    base = L.LightningModule if key == "model" else L.LightningDataModule
    return [n for n in getattr(module, "__all__", []) if isinstance(getattr(module, n), type)
            and issubclass(getattr(module, n), base)]
