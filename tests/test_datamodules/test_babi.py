"""The bAbI reader on the real files: counts, supporting facts, multi-word answers, memories and bad input."""

import pytest
import torch

from datamodules import BabiDataModule, DatasetNotFoundError
from datamodules.babi import FOLDER, TASKS, parse_babi, task_file


@pytest.fixture(scope="module")
def task1(babi_root):
    dm = BabiDataModule(str(babi_root), tasks=1, on_device=False)
    dm.setup()
    return dm


def test_every_1k_train_file_holds_1000_questions(babi_root):
    for task in TASKS:
        questions = parse_babi(task_file(babi_root / FOLDER / "en", task, "train"))
        assert len(questions) == 1000, task
    stories = {id(q.story) for q in parse_babi(task_file(babi_root / FOLDER / "en", 1, "train"))}
    assert len(stories) == 200  # task 1: stories of 10 statements and 5 questions


def test_supporting_facts_point_at_the_sentences_that_answer(babi_root):
    for q in parse_babi(task_file(babi_root / FOLDER / "en", 1, "train")):
        (fact,) = q.supports
        sentence = q.story[fact]
        assert fact < q.n_statements
        assert q.words[-1] == sentence[0] and sentence[-1] == q.answer  # "where is mary" <- "mary ... bathroom"


def test_multi_word_answers_survive_as_one_token(babi_root):
    paths = {q.answer for q in parse_babi(task_file(babi_root / FOLDER / "en", 19, "train"))}
    assert "n,w" in paths and all(len(p.split(",")) == 2 for p in paths)
    lists = {q.answer for q in parse_babi(task_file(babi_root / FOLDER / "en", 8, "train"))}
    assert "football,apple" in lists and "nothing" in lists


def test_the_memory_holds_the_newest_statements_first_and_the_supports_slots(task1):
    batch = task1.on_after_batch_transfer(task1.train_set.__getitems__(list(range(len(task1.train_set)))), 0)
    assert batch.stories.shape[1:] == (task1.memory_slots, task1.sentence_length)
    rows = torch.arange(len(batch.answers))
    support = batch.supports[:, 0]
    assert (support >= 0).all() and (support < batch.n_memories).all()
    fact = batch.stories[rows, support]  # (B, J): the supporting sentence ends with the answer
    last_word = fact.gather(1, ((fact != 0).sum(1, keepdim=True) - 1))
    assert torch.equal(last_word.squeeze(1), batch.answers)
    # empty slots past n_memories
    assert (batch.stories[torch.arange(task1.memory_slots) >= batch.n_memories[:, None]] == 0).all()


def test_the_vocabulary_is_the_tasks_words_or_all_20_tasks(babi_root, task1):
    # the chosen tasks' words (as the authors' code), nil first; or all 20 tasks' words
    words = {w for q in parse_babi(task_file(babi_root / FOLDER / "en", 1, "test")) for s in q.story for w in s}
    assert task1.vocab[0] == "<nil>" and words <= set(task1.vocab) and "n,w" not in task1.vocab
    everything = BabiDataModule(str(babi_root), tasks=1, vocabulary="all").build_vocab()
    assert {"n,w", "football,apple", "hallway"} <= set(everything) and set(task1.vocab) < set(everything)
    with pytest.raises(ValueError, match="data.vocabulary must be 'tasks' or 'all'"):
        BabiDataModule(str(babi_root), vocabulary="task")


def test_memory_size_keeps_the_last_statements(babi_root):
    dm = BabiDataModule(str(babi_root), tasks=2, memory_size=3, on_device=False)
    dm.setup()
    batch = dm.on_after_batch_transfer(dm.test_set.__getitems__(list(range(200))), 0)
    assert batch.stories.shape[1] == 3 and batch.n_memories.max() == 3
    questions = parse_babi(task_file(babi_root / FOLDER / "en", 2, "test"))[:200]
    for b, q in enumerate(questions):
        assert dm.sentence(batch.stories[b, 0]) == " ".join(q.story[q.n_statements - 1])
        kept = [q.n_statements - 1 - s for s in q.supports if q.n_statements - 1 - s < 3]
        assert sorted(s for s in batch.supports[b].tolist() if s >= 0) == sorted(kept)


def test_validation_is_a_seeded_tenth_of_train(babi_root):
    a = BabiDataModule(str(babi_root), tasks=[1, 2], seed=0, on_device=False)
    b = BabiDataModule(str(babi_root), tasks=[1, 2], seed=1, on_device=False)
    a.setup(), b.setup()
    assert len(a.train_set) == 1800 and len(a.val_set) == 200 and len(a.test_set) == 2000
    assert torch.bincount(a.val_set.tensors[-1]).tolist()[1:] == [100, 100]
    assert not torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])


def test_a_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "qa1_single-supporting-fact_train.txt"
    path.write_text("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t1\n3 Where is John?\tgarden\n")
    with pytest.raises(ValueError, match=rf"{path.name}, line 3: a question line needs"):
        parse_babi(path)
    path.write_text("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t7\n")
    with pytest.raises(ValueError, match=r"line 2: supporting ids '7' must name earlier statements"):
        parse_babi(path)
    path.write_text("1 Mary moved to the bathroom.\nMary went home.\n")
    with pytest.raises(ValueError, match=r"line 2: expected '<id> <sentence>'"):
        parse_babi(path)


def test_missing_data_says_where_it_looked(tmp_path, babi_root):
    with pytest.raises(DatasetNotFoundError, match=rf"looked for {tmp_path}.*tasks_1-20_v1-2.tar.gz"):
        BabiDataModule(str(tmp_path), tasks=1).setup()
    with pytest.raises(DatasetNotFoundError, match=r"en-10k set as distributed has no training file for task 3"):
        BabiDataModule(str(babi_root), variant="en-10k", tasks=3).setup()
    assert 3 not in BabiDataModule(str(babi_root), variant="en-10k", tasks="all").tasks
    with pytest.raises(ValueError, match=r"data.tasks"):
        BabiDataModule(str(babi_root), tasks=[0, 21])
