"""The ``dl4`` console script: one entry for every command, and the exit status each failure gets.

    dl4 fit|validate|test|predict --config configs/<experiment>.yaml     (LightningCLI: dl4/cli.py)
    dl4 sweep sweeps/<experiment>.yaml --count 20                        (dl4/sweep.py)
    dl4 data download|check|...                                          (dl4/data.py)

A user's mistake (a missing dataset, a setting that cannot work, an unusable checkpoint, a diverged run) is one line,
``dl4: error: ...``, and an exit status that says which (``EXIT_STATUS``); a bug keeps its traceback.
"""

import errno
import logging
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.faults import DiskFullError, DivergedError, disk_full
from datamodules.integrity import CorruptDataError
from dl4.cli import DL4CLI, configure_runtime
from dl4.data_root import DatasetNotFoundError
from dl4.errors import ConfigError, InputError

HELP = """
usage: dl4 <command> [options]        (dl4 <command> --help for a command's options)

Train, evaluate and apply the classic models of deep learning (github: dl4; README.md).

commands:
  fit        train a model: dl4 fit --config configs/<experiment>.yaml [--trainer.max_epochs=N ...]
  validate   evaluate a checkpoint on the validation set: --config ... --ckpt_path <file or last>
  test       evaluate a checkpoint on the test set: --config ... --ckpt_path <file or last>
  predict    apply a checkpoint to your own inputs (or the test set) and write the answers, pictures and a W&B
             table: --config ... --ckpt_path ... --data.init_args.predict_path=<images, stories, bits> (docs/predict.md)
  sweep      a W&B sweep without W&B's server: dl4 sweep sweeps/<experiment>.yaml --count 20
  data       fetch and verify the datasets: dl4 data download [mnist babi ...], dl4 data list

experiments: the configs/ folder, one YAML per experiment (ls configs/; the README's table says what each
reproduces); sweeps/ holds their W&B sweeps. Any key is also a flag: --model.init_args.optimizer.init_args.lr=3e-4.
A run logs to W&B offline unless you are logged in; `wandb leet <run dir>` shows an offline run in the terminal.
"""


EXIT_STATUS = {DatasetNotFoundError: 1, CorruptDataError: 1, DiskFullError: 1, InputError: 1, ConfigError: 2,
               DivergedError: 3}


def main(args=None) -> None:
    """``dl4 fit|validate|test|predict`` (LightningCLI), ``dl4 sweep`` (``dl4/sweep.py``) and ``dl4 data``
    (``dl4/data.py``); ``dl4`` or ``dl4 --help`` lists them."""
    configure_runtime()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP.strip())
        sys.exit(0 if argv else 2)
    try:
        if argv[:1] == ["sweep"]:
            from dl4 import sweep

            sys.exit(sweep.main(argv[1:]))
        if argv[:1] == ["data"]:
            from dl4 import data

            sys.exit(data.main(argv[1:]))
        DL4CLI(args=args)
    except SIGTERMException as err:  # Lightning's (a SystemExit); PreemptionCheckpoint says what was saved
        print(f"dl4: {err.code or 'stopped by SIGTERM outside a training step; no checkpoint was written for it'}",
              file=sys.stderr)
        sys.exit(143)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"dl4: error: {cause}", file=sys.stderr)
        logging.raiseExceptions = False  # W&B's teardown logging to a full disk would print tracebacks after it
        sys.exit(next(status for kind, status in EXIT_STATUS.items() if isinstance(cause, kind)))


def user_error(err: BaseException) -> Exception | None:
    """The missing dataset, impossible setting, unusable checkpoint, full disk or divergence behind ``err``, if one is:
    jsonargparse wraps the errors of the classes it builds (a network inside a model's ``init_args``) in its own,
    so the chain is searched. A checkpoint whose weights do not fit the configured network becomes a ConfigError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, tuple(EXIT_STATUS)):
            return err
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
            return disk_full(err.filename)  # a log, a data file, a temporary file
        if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
            detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), "")
            return ConfigError(f"the checkpoint's weights do not fit the model as configured ({detail}): a "
                               "--model.* flag changes the network's shape; drop it to use the checkpoint's")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
