"""COCO-format captions: the real COCO 2017 sample, precomputed features, the Karpathy split, the MNIST captions
generator, and what a missing or malformed file says."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torchvision.io import decode_image

from conftest import require_dataset
from datamodules import CocoCaptionsDataModule, DatasetNotFoundError
from datamodules.coco_captions import CaptionShuffle, Vocabulary, tokenize
from dl4.features import precompute_features
from datamodules.integrity import CorruptDataError
from datamodules.mnist_captions import (COLOURS, NUMBERS, MNISTCaptionsDataModule, content, parse_caption,
                                        write_mnist_captions)
from dl4.errors import ConfigError

SMALL = {"train": 300, "val": 60, "test": 60}


@pytest.fixture(scope="module")
def coco_root():
    return require_dataset("coco_sample/annotations/captions_val2017.json")


@pytest.fixture(scope="module")
def coco(coco_root):
    dm = CocoCaptionsDataModule("coco_sample", data_dir=str(coco_root), image_size=64, num_workers=0,
                                eval_batch_size=32)
    dm.setup()
    return dm


def test_the_real_coco_sample_loads_with_its_counts_vocabulary_and_decoded_images(coco):
    assert [len(coco.data[s]) for s in ("train", "val", "test")] == [80, 79, 79]  # test defaults to val2017
    assert sum(map(len, coco.data["train"].captions)) == 400 and sum(map(len, coco.data["val"].captions)) == 395
    words = coco.vocabulary.words
    assert words[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and {"a", "man", "of"} <= set(words)
    counts = {}
    for caption in (c for cs in coco.data["train"].captions for c in cs):
        for w in caption:
            counts[w] = counts.get(w, 0) + 1
    assert set(words[4:]) == {w for w, n in counts.items() if n >= 4}  # min_word_count 4, training words only

    batch = coco.on_after_batch_transfer(next(iter(coco.val_dataloader())), 0)
    assert batch["images"].shape == (32, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["images"].std() > 0.3  # decoded pictures, ImageNet-normalised, not blank
    assert len(batch["tokens"]) == 32 * 5 and batch["owner"].bincount().tolist() == [5] * 32  # all 5 captions
    assert (batch["tokens"][:, 0] == 1).all() and (batch["tokens"].gather(1, batch["lengths"][:, None] - 1) == 2).all()
    first = coco.data["val"].captions[0][0]
    assert coco.vocabulary.decode(batch["tokens"][0]) == " ".join(w if w in words else "<unk>" for w in first)

    coco.batch_size = 16
    train = next(iter(coco.train_dataloader()))
    assert len(train["tokens"]) == len(train["images"]) == 16
    assert train["owner"].tolist() == list(range(len(train["owner"])))  # one caption an image


def test_training_draws_one_caption_per_image_afresh_each_epoch_and_reproducibly():
    sampler = CaptionShuffle([5] * 50, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(50))
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and {c for _, c in first + second} == set(range(5))
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_precomputed_features_give_the_same_captions_in_the_same_order(coco, tmp_path):
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # 12 numbers an image
    written = precompute_features(coco, pool, tmp_path / "features")
    assert [p.name for p in written] == ["train2017.npy", "val2017.npy", "val2017.npy"]
    rows = np.load(tmp_path / "features" / "val2017.npy")
    assert rows.shape == (79, 12)
    features = CocoCaptionsDataModule("coco_sample", data_dir=str(coco.root.parent), image_size=64, num_workers=0,
                                      eval_batch_size=32, features=str(tmp_path / "features"))
    features.setup()
    a, b = next(iter(coco.val_dataloader())), next(iter(features.val_dataloader()))
    assert b["images"].shape == (32, 12)
    for key in ("tokens", "lengths", "owner", "image_id", "caption_id"):
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        expected = pool(coco.on_after_batch_transfer(a, 0)["images"])
    torch.testing.assert_close(features.on_after_batch_transfer(b, 0)["images"], expected)
    np.save(tmp_path / "features" / "val2017.npy", rows[:10])
    broken = CocoCaptionsDataModule("coco_sample", data_dir=str(coco.root.parent), features=str(tmp_path / "features"))
    with pytest.raises(CorruptDataError, match="val2017.npy holds \\(10, 12\\).*79 images"):
        broken.setup()


def test_the_karpathy_split_takes_its_images_from_both_2014_folders(coco_root, tmp_path):
    root = tmp_path / "coco2014"
    (root / "annotations").mkdir(parents=True)
    for year17, year14 in (("train2017", "train2014"), ("val2017", "val2014")):
        shutil.copy(coco_root / "coco_sample" / "annotations" / f"captions_{year17}.json",
                    root / "annotations" / f"captions_{year14}.json")
        (root / year14).symlink_to(coco_root / "coco_sample" / year17)
    train_ids = sorted(COCO(str(root / "annotations" / "captions_train2014.json")).imgs)
    val_ids = sorted(COCO(str(root / "annotations" / "captions_val2014.json")).imgs)
    split = ["train"] * 40 + ["restval"] * 40
    images = [{"filepath": "train2014", "cocoid": i, "split": s} for i, s in zip(train_ids, split)]
    images += [{"filepath": "val2014", "cocoid": i, "split": "val" if k < 30 else "test"}
               for k, i in enumerate(val_ids)]
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    dm = CocoCaptionsDataModule(str(root), karpathy_split="dataset_coco.json", image_size=32, num_workers=0)
    dm.setup()
    assert [len(dm.data[s]) for s in ("train", "val", "test")] == [80, 30, 49]
    assert dm.data["val"].image_ids == val_ids[:30] and dm.data["train"].image_ids == train_ids


def test_missing_and_malformed_files_say_which_and_where_to_get_coco(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="captions_train2017.json does not exist.*cocodataset.org"):
        CocoCaptionsDataModule(str(tmp_path)).prepare_data()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text('{"images": [{"id": 1}]')
    with pytest.raises(CorruptDataError, match="captions_train2017.json is not an MS-COCO captions file"):
        CocoCaptionsDataModule(str(tmp_path)).prepare_data()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(CorruptDataError, match="an entry of 'images' lacks one of id, file_name"):
        CocoCaptionsDataModule(str(tmp_path)).prepare_data()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 1, "id": 1, "caption": "a"}]}))
    with pytest.raises(DatasetNotFoundError, match="1 of 1 images.*not in .*train2017 \\(the first: 1.jpg\\)"):
        CocoCaptionsDataModule(str(tmp_path)).prepare_data()
    with pytest.raises(ConfigError, match="data.in_memory"):
        CocoCaptionsDataModule(str(tmp_path), in_memory=True)


def test_vocabulary_round_trip_and_unknown_words():
    vocab = Vocabulary.build([tokenize("A red Seven, left of a blue two."), tokenize("a red one")], min_count=2)
    assert vocab.words == ["<pad>", "<start>", "<end>", "<unk>", "a", "red"]
    assert vocab.decode(vocab.encode(["a", "red", "seven"])) == "a red <unk>"


@pytest.fixture(scope="module")
def mnist_captions(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist_captions")
    return write_mnist_captions(out / "a", str(mnist_root), seed=0, sizes=SMALL)


def test_generated_captions_load_in_pycocotools_and_say_what_was_drawn(mnist_captions, mnist_root):
    from datamodules.mnist import load_mnist

    images, labels = load_mnist(str(mnist_root), False, download=False)
    coco = COCO(str(mnist_captions / "annotations" / "captions_val.json"))
    assert len(coco.imgs) == 60 and len(coco.anns) == 300
    for image_id, record in coco.imgs.items():
        captions = [a["caption"] for a in coco.imgToAnns[image_id]]
        assert len(set(captions)) == 5  # five phrasings
        assert all(parse_caption(c) == content(record) for c in captions)
        for digit in record["digits"]:  # the record is what was drawn: its MNIST digit, in its colour, in its box
            assert labels[digit["mnist_index"]] == digit["digit"] and digit["colour"] in COLOURS
            assert any(f"{digit['colour']} {NUMBERS[digit['digit']]}" in c for c in captions)
        picture = decode_image(str(mnist_captions / "val" / record["file_name"])).permute(1, 2, 0)
        x, y, w, h = record["digits"][0]["box"]
        ink = picture[y:y + h, x:x + w].float().amax(-1) / 255
        source = images[record["digits"][0]["mnist_index"]].float() / 255
        assert (ink >= source * max(COLOURS[record["digits"][0]["colour"]]) - 0.01).all()


def test_the_same_seed_writes_identical_files_and_other_settings_are_refused(mnist_captions, mnist_root):
    again = write_mnist_captions(mnist_captions.parent / "b", str(mnist_root), seed=0, sizes=SMALL)
    other = write_mnist_captions(mnist_captions.parent / "c", str(mnist_root), seed=1, sizes=SMALL)

    def digests(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}

    assert digests(again) == digests(mnist_captions)
    assert digests(other) != digests(mnist_captions)
    with pytest.raises(ConfigError, match="written with other settings"):
        write_mnist_captions(mnist_captions, str(mnist_root), seed=2, sizes=SMALL)


def test_the_mnist_captions_datamodule_reads_the_generated_files_as_coco(mnist_captions, mnist_root):
    dm = MNISTCaptionsDataModule(str(mnist_captions), str(mnist_root), train_size=300, val_size=60, test_size=60)
    dm.prepare_data()
    dm.setup()
    assert dm.datasets["val"].source.shape == (60, 3, 64, 64)  # decoded once, kept in memory
    batch = dm.fixed_batch(4)
    assert batch["images"].max() <= 1 and len(batch["tokens"]) == 20
    texts = [dm.vocabulary.decode(t) for t in batch["tokens"]]
    records = dm.records("val")
    owners = batch["image_id"][batch["owner"]].tolist()
    assert dm.caption_accuracy("val", owners, texts) == 1.0
    assert dm.caption_accuracy("val", owners[5:] + owners[:5], texts) == 0  # each caption on the next image
    queries = dm.arithmetic_queries("val")  # every one-digit image, with each of the 9 other colours
    singles = [i for i, r in records.items() if len(r["digits"]) == 1]
    assert singles and len(queries) == 9 * len(singles) and {q["image_id"] for q in queries} == set(singles)
    for q in queries:
        (drawn,) = records[q["image_id"]]["digits"]
        assert q["minus"] == drawn["colour"] != q["plus"] and q["target"] == (q["plus"], drawn["digit"])
    assert [q["image_id"] for q in queries[:len(singles)]] == singles  # the first pass: every image once
