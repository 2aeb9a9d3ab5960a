"""bAbI (Weston et al. 2015): the 20 question-answering tasks, read as End-to-End Memory Networks read them.

The standard distribution ``tasks_1-20_v1-2/<set>/qa<N>_<name>_{train,test}.txt`` (set ``en``: 1,000 training
questions per task, ``en-10k``: 10,000). In a file, a line ``<id> <sentence>`` adds a statement to the story (id 1
starts a new story), and ``<id> <question>?<TAB><answer><TAB><supporting ids>`` asks about the statements so far.
Every question is one example: the last ``memory_size`` statements before it (the memory), the question, the
answer and which memory slots hold its supporting facts. Answers are single tokens; task 8's lists and task 19's
paths ("apple,football", "n,w") stay one token, as in the authors' code.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import lightning as L
import torch

from datamodules.download import BABI_URL, download_babi
from dl4.data_root import DatasetNotFoundError, default_data_dir
from datamodules.integrity import CorruptDataError, verify_published
from datamodules.tensors import TensorBatchDataset, first_examples, tensor_loader
from dl4.errors import ConfigError, InputError, check_positive

TASKS = {1: "single-supporting-fact", 2: "two-supporting-facts", 3: "three-supporting-facts",
         4: "two-arg-relations", 5: "three-arg-relations", 6: "yes-no-questions", 7: "counting", 8: "lists-sets",
         9: "simple-negation", 10: "indefinite-knowledge", 11: "basic-coreference", 12: "conjunction",
         13: "compound-coreference", 14: "time-reasoning", 15: "basic-deduction", 16: "basic-induction",
         17: "positional-reasoning", 18: "size-reasoning", 19: "path-finding", 20: "agents-motivations"}
FOLDER = Path("babi") / "tasks_1-20_v1-2"
NIL = "<nil>"  # word id 0: padding of sentences and memories


@dataclass
class Question:
    story: list[list[str]]  # the statements of the story so far (shared with the story's other questions)
    n_statements: int  # how many of them precede this question
    words: list[str]
    answer: str
    supports: list[int]  # indices into story[:n_statements] of the supporting facts
    line: int = 0  # the question's line in its file


class BabiBatch(NamedTuple):
    stories: torch.Tensor  # (B, M, J) word ids of the memory, the newest statement in slot 0, padded with 0
    queries: torch.Tensor  # (B, J)
    answers: torch.Tensor  # (B,) word ids
    n_memories: torch.Tensor  # (B,) the real slots of each memory
    supports: torch.Tensor  # (B, 3) the slots of the supporting facts (-1: none, or older than the memory)
    tasks: torch.Tensor  # (B,) task numbers


WORD = re.compile(r"[a-z0-9']+")


def tokenize(sentence: str) -> list[str]:
    return WORD.findall(sentence.lower())


RESTORE_BABI = f"Delete it and run `dl4 data download babi`, which restores it from tasks_1-20_v1-2.tar.gz ({BABI_URL})."


def _malformed(path: Path, line: int, why: str, user_file: bool = False) -> ValueError:
    if user_file:
        return InputError(f"{path}, line {line}: {why}. Write bAbI's format: '<id> <sentence>' lines numbered from "
                          "1 in each story, questions '<id> <question>?' with '<TAB><answer>' optional")
    return CorruptDataError(f"{path}, line {line}: {why}. {RESTORE_BABI}")


def parse_babi(path: Path, user_file: bool = False) -> list[Question]:
    """The questions of one bAbI file, in file order. A malformed line, or text that is not UTF-8, raises
    CorruptDataError (a ValueError) with the file and line. A ``user_file`` (``dl4 predict``'s stories) may leave
    out answers (a line ending in '?' is a question; its answer is then "") and supporting ids, and its errors are
    ``InputError``s."""
    questions: list[Question] = []
    story: list[list[str]] = []
    statement_of_line: dict[int, int] = {}  # line id -> index of the statement in the story
    last_id = 0
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise _malformed(path, line, f"not UTF-8 text (byte {err.object[err.start]:#04x})", user_file) from None
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        head, _, rest = line.partition(" ")
        if not head.isdigit():
            raise _malformed(path, number, f"expected '<id> <sentence>', got {line[:80]!r}", user_file)
        line_id = int(head)
        if line_id == 1:
            story, statement_of_line = [], {}
        elif line_id != last_id + 1:
            raise _malformed(path, number, f"line id {line_id} does not follow {last_id} (a story starts at 1)",
                             user_file)
        last_id = line_id
        if user_file and "\t" not in rest and rest.rstrip().endswith("?"):
            rest = rest.rstrip() + "\t\t"  # a question without its answer
        if "\t" not in rest:
            story.append(tokenize(rest))
            statement_of_line[line_id] = len(story) - 1
            continue
        fields = rest.split("\t")
        if user_file:
            fields = (fields + ["", ""])[:3]
        if len(fields) != 3 or not (fields[1].strip() or user_file):
            raise _malformed(path, number, "a question line needs '<question>?<TAB><answer><TAB><supporting "
                                           f"ids>', got {line[:80]!r}", user_file)
        try:
            supports = [statement_of_line[int(i)] for i in fields[2].split()]
        except (ValueError, KeyError):
            raise _malformed(path, number, f"supporting ids {fields[2]!r} must name earlier statements of "
                                           "the story", user_file) from None
        questions.append(Question(story, len(story), tokenize(fields[0]), fields[1].strip().lower(), supports,
                                  number))
    if user_file and not questions:
        raise InputError(f"{path}: no questions in the file (a question is a line '<id> <question>?')")
    return questions


def task_file(folder: Path, task: int, split: str) -> Path:
    """The file of one task and split; a missing one says where it looked (en-10k has no task 3 train file)."""
    path = folder / f"qa{task}_{TASKS[task]}_{split}.txt"
    if not path.is_file():
        extra = (" The en-10k set as distributed has no training file for task 3: use variant 'en' for task 3, or "
                 "leave task 3 out of a joint en-10k run (tasks: [1, 2, 4, ...])."
                 if folder.name == "en-10k" and task == 3 and split == "train" else "")
        raise DatasetNotFoundError(f"bAbI task {task} ({split}) not found: looked for {path}.{extra}")
    return path


class BabiDataModule(L.LightningDataModule):
    """The bAbI tasks as tensors (on the training device); a batch is a ``BabiBatch``.

    A memory holds the last M statements before its question, the newest in slot 0: slot i is the statement i + 1
    steps back in time, the paper's temporal index. M is ``memory_size``, or the longest story if shorter.

    Args:
        data_dir: the data root holding ``babi/tasks_1-20_v1-2/<variant>/`` (default ``$DL4_DATA_DIR``).
        variant: ``en`` (1,000 training questions per task) or ``en-10k`` (10,000).
        tasks: one task number, or a list of them trained jointly (``all``: every task of the variant).
        memory_size: the statements kept in memory (the paper's 50).
        val_fraction: the share of each task's training questions held out for validation, drawn by ``seed``.
        download: fetch and unpack the bAbI archive into the data root when the variant's folder is missing.
        vocabulary: ``tasks``: the words of the chosen tasks (train and test), as the authors' code builds it, so
            the answer's softmax ranges over those; ``all``: the words of all 20 tasks of the variant, the same
            word ids whatever the tasks.
        predict_path: what ``dl4 predict`` answers: a file of stories in bAbI's format, answers optional. Its words
            are read with the checkpoint's vocabulary, sentence length and memory size (an unknown word is left out
            and named in that question's ``note``); bAbI itself is not read. Without it: the test set.
    """

    def __init__(self, data_dir: str | None = None, variant: Literal["en", "en-10k"] = "en",
                 tasks: int | list[int] | Literal["all"] = 1, memory_size: int = 50, batch_size: int = 32,
                 eval_batch_size: int = 1000, val_fraction: float = 0.1, seed: int = 0, download: bool = False,
                 on_device: bool = True, vocabulary: Literal["tasks", "all"] = "tasks", predict_path: str | None = None):
        super().__init__()
        check_positive("data", batch_size=batch_size, eval_batch_size=eval_batch_size)
        task_list = list(range(1, 21)) if tasks == "all" else [tasks] if isinstance(tasks, int) else list(tasks)
        bad = [t for t in task_list if t not in TASKS]
        if bad or not task_list:
            raise ConfigError(f"data.tasks: {tasks!r} holds no valid task numbers {bad or ''}; use 1-20, a list of "
                             f"them, or 'all'")
        if variant == "en-10k" and tasks == "all":
            task_list.remove(3)  # the distribution lacks qa3's en-10k training file
        if vocabulary not in ("tasks", "all"):
            raise ConfigError(f"data.vocabulary must be 'tasks' or 'all', got {vocabulary!r}")
        if memory_size < 1 or not 0 < val_fraction < 1:
            raise ConfigError(f"data.memory_size must be >= 1 and data.val_fraction in (0, 1), got {memory_size} "
                             f"and {val_fraction}")
        self.data_dir = data_dir or default_data_dir()
        self.folder = Path(self.data_dir) / FOLDER / variant
        self.tasks, self.variant = task_list, variant
        self.memory_size, self.batch_size, self.eval_batch_size = memory_size, batch_size, eval_batch_size
        self.val_fraction, self.seed, self.download, self.on_device = val_fraction, seed, download, on_device
        self.vocabulary = vocabulary
        self.vocab: list[str] | None = None
        self.predict_path, self.predict_questions, self.predict_names = predict_path, None, None
        self.sentence_length = self.memory_slots = None
        self.train_set = self.val_set = self.test_set = self.statements = None

    def own_inputs(self) -> bool:
        """True when ``dl4 predict`` answers the user's stories: bAbI itself is not needed."""
        return self.predict_path is not None and self.trainer is not None and self.trainer.predicting

    def prepare_data(self):
        """Downloads bAbI if asked, then checks the files this run reads against the published checksums, before
        the trainer starts a logger run."""
        if self.own_inputs():
            return
        if not self.folder.is_dir() and self.download:
            download_babi(Path(self.data_dir))  # as `dl4 data download babi`: every file verified
        self._files("train"), self._files("test")

    def _files(self, split: str) -> dict[int, Path]:
        if not self.folder.is_dir():
            raise DatasetNotFoundError(
                f"bAbI not found: looked for {self.folder.resolve()}. Run `dl4 data download babi --root "
                f"{Path(self.data_dir).resolve()}` (or unpack tasks_1-20_v1-2.tar.gz, {BABI_URL}, into "
                f"{(Path(self.data_dir) / 'babi').resolve()}), point the data root at the folder holding "
                f"babi/ (DL4_DATA_DIR=... or --data.init_args.data_dir=...), or set --data.init_args.download=true "
                f"on a machine with internet.")
        files = {t: task_file(self.folder, t, split) for t in self.tasks}
        for path in files.values():
            self._verify(path)
        return files

    def _verify(self, path: Path) -> None:
        verify_published(path, f"babi/{path.relative_to(self.folder.parent.parent)}", RESTORE_BABI)

    def build_vocab(self) -> list[str]:
        """Every word and answer of the chosen tasks (``vocabulary: tasks``) or of all 20 tasks of the variant, train
        and test files, sorted; id 0 is nil."""
        if self.vocabulary == "tasks":
            paths = [*self._files("train").values(), *self._files("test").values()]
        else:  # every file of the variant: a missing one is an error, not a smaller vocabulary
            paths = [task_file(self.folder, t, split) for t in range(1, 21) for split in ("train", "test")
                     if not (self.variant == "en-10k" and t == 3 and split == "train")]  # en-10k as distributed: see task_file
            for path in paths:
                self._verify(path)
        words, stories = set(), {}
        for path in paths:
            for q in parse_babi(path):
                words.update(q.words, [q.answer])
                stories[id(q.story)] = q.story
        words.update(w for story in stories.values() for sentence in story for w in sentence)
        return [NIL, *sorted(words)]

    def setup(self, stage: str | None = None):
        if self.own_inputs():  # read (and checked) now; made word ids once the checkpoint's vocabulary is restored
            self.predict_questions = parse_babi(Path(self.predict_path), user_file=True)
            self.predict_names = [f"line {q.line}: {' '.join(q.words)}?" for q in self.predict_questions]
            return
        if self.test_set is not None:
            return
        train_files, test_files = self._files("train"), self._files("test")
        self.vocab = self.vocab or self.build_vocab()
        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        g = torch.Generator().manual_seed(self.seed)
        train, val = [], []
        for task, path in train_files.items():
            questions = [(task, q) for q in parse_babi(path)]
            perm = torch.randperm(len(questions), generator=g).tolist()
            n_val = round(len(questions) * self.val_fraction)
            val += [questions[i] for i in sorted(perm[:n_val])]
            train += [questions[i] for i in sorted(perm[n_val:])]
        test = [(task, q) for task, path in test_files.items() for q in parse_babi(path)]
        everything = train + val + test
        self.sentence_length = max(max(len(s) for _, q in everything for s in q.story),
                                   max(len(q.words) for _, q in everything))
        self.memory_slots = min(self.memory_size, max(q.n_statements for _, q in everything))
        device = self.trainer.strategy.root_device if self.on_device and self.trainer is not None else "cpu"
        rows, first_row = [[0] * self.sentence_length], {}
        self.train_set, self.val_set, self.test_set = (self._tensors(part, rows, first_row).to(device)
                                                       for part in (train, val, test))
        self.statements = torch.tensor(rows).to(device)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _tensors(self, questions: list[tuple[int, Question]], rows: list[list[int]], first_row: dict):
        """One split as tensors. A memory is M indices into the shared table of statements (``rows``, row 0 the
        empty sentence), so a story's statements are stored once however many questions it has."""
        M, J, ids = self.memory_slots, self.sentence_length, self.word_id
        pad = lambda words: [ids[w] for w in words] + [0] * (J - len(words))  # noqa: E731
        memories, queries, answers, n_memories, supports, tasks = [], [], [], [], [], []
        for task, q in questions:
            if id(q.story) not in first_row:
                first_row[id(q.story)] = len(rows)
                rows += [pad(sentence) for sentence in q.story]
            first = first_row[id(q.story)]
            kept = list(range(q.n_statements - 1, max(-1, q.n_statements - 1 - M), -1))  # newest first
            memories.append([first + i for i in kept] + [0] * (M - len(kept)))
            slots = [q.n_statements - 1 - i for i in q.supports if q.n_statements - 1 - i < M][:3]
            supports.append(slots + [-1] * (3 - len(slots)))
            queries.append(pad(q.words))
            answers.append(ids[q.answer])
            n_memories.append(len(kept))
            tasks.append(task)
        return TensorBatchDataset(*(torch.tensor(v) for v in (memories, queries, answers, n_memories, supports,
                                                                tasks)))

    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> BabiBatch:
        """The memories' statement indices -> their word ids (one gather on the batch's device)."""
        memories, *rest = batch
        if self.statements.device != memories.device:
            self.statements = self.statements.to(memories.device)
        return BabiBatch(self.statements[memories], *rest)

    def fixed_batch(self, n: int, seed: int = 0, device=None) -> BabiBatch:
        """The first ``n`` validation questions (the split is fixed by the datamodule's seed), as a validation step
        gets them."""
        return first_examples(self, self.val_set, n, device)

    def train_dataloader(self):
        return tensor_loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return tensor_loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return tensor_loader(self.test_set, self.eval_batch_size, shuffle=False)

    def sentence(self, ids: torch.Tensor) -> str:
        """Word ids (padded with 0) -> the words."""
        return " ".join(self.vocab[i] for i in ids.tolist() if i != 0)

    def predict_dataloader(self):
        """The user's questions as a batch of ``BabiBatch`` tensors, in the checkpoint's vocabulary and shapes
        (restored by now); ``predict_info`` gives per question the answer the file gives and a ``note`` on what did
        not fit (unknown words, long sentences), which the writer adds to its record."""
        if self.predict_questions is None:  # no file of the user's: the test set, scored
            tasks = self.test_set.tensors[5].tolist()
            self.predict_names = [f"task {t}, test question {i}" for i, t in enumerate(tasks)]
            self.predict_info = [{"answer": self.vocab[a]} for a in self.test_set.tensors[2].tolist()]
            return tensor_loader(self.test_set, self.eval_batch_size, shuffle=False)
        if self.sentence_length is None:
            raise ConfigError("the checkpoint holds no bAbI vocabulary and shapes (saved by dl4 since issue 36): "
                              "train it again to predict with it")
        J, M, ids = self.sentence_length, self.memory_slots, {w: i for i, w in enumerate(self.vocab)}
        self.word_id, self.predict_info = ids, []
        rows, memories, queries, answers, n_memories = [[0] * J], [], [], [], []
        for q in self.predict_questions:
            unknown, long = set(), False

            def encode(words):
                nonlocal long
                unknown.update(w for w in words if w not in ids)
                long |= len(words) > J
                return ([ids.get(w, 0) for w in words] + [0] * J)[:J]

            kept = q.story[max(0, q.n_statements - M):q.n_statements][::-1]  # newest first, at most M
            memories.append([len(rows) + i for i in range(len(kept))] + [0] * (M - len(kept)))
            rows += [encode(sentence) for sentence in kept]
            queries.append(encode(q.words))
            answers.append(ids.get(q.answer, -2) if q.answer else -1)  # -1: no answer given, -2: an unknown one
            n_memories.append(len(kept))
            notes = ([f"not in the checkpoint's vocabulary, left out: {', '.join(sorted(unknown))}"] if unknown else [])
            notes += [f"a sentence longer than the model's {J} words was cut"] if long else []
            notes += [f"only the last {M} statements fit the memory"] if q.n_statements > M else []
            notes += [f"the answer {q.answer!r} is not in the vocabulary: counted wrong"] if q.answer and \
                q.answer not in ids else []
            self.predict_info.append({**({"answer": q.answer} if q.answer else {}),
                                      **({"note": "; ".join(notes)} if notes else {})})
        self.statements = torch.tensor(rows)
        n = len(memories)
        dataset = TensorBatchDataset(torch.tensor(memories), torch.tensor(queries), torch.tensor(answers),
                                     torch.tensor(n_memories), torch.full((n, 3), -1), torch.zeros(n, dtype=torch.long))
        return tensor_loader(dataset, self.eval_batch_size, shuffle=False)

    def state_dict(self):
        return {"vocab": self.vocab, "sentence_length": self.sentence_length, "memory_slots": self.memory_slots}

    def load_state_dict(self, state_dict):
        self.vocab = state_dict["vocab"]
        self.sentence_length = state_dict.get("sentence_length", self.sentence_length)
        self.memory_slots = state_dict.get("memory_slots", self.memory_slots)
