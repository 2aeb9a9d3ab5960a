"""Image-caption pairs in the official MS-COCO captions format: ``annotations/captions_<split>.json`` (read with
pycocotools) and the images in ``<split>/``, under a root folder of the data root.

    coco/annotations/captions_train2017.json   coco/train2017/000000000009.jpg ...    (COCO 2017)
    coco/annotations/captions_train2014.json   coco/train2014/COCO_train2014_....jpg  (COCO 2014)

With ``karpathy_split`` (Karpathy & Fei-Fei's ``dataset_coco.json``), the 2014 images are split as that file says
(train + restval for training, its 5,000 val and 5,000 test images) and their captions come from the two official
2014 files. Batches are dicts:

- ``images``: (B, 3, S, S) float (ImageNet-normalised unless ``normalize: false``), or (B, F) precomputed features;
- ``tokens``: (N, T) long, each caption ``<start> words <end>`` padded with 0 (``<pad>``); ``lengths``: (N,);
- ``owner``: (N,) the row of ``images`` each caption belongs to; ``image_id``, ``caption_id``: COCO's ids.

Training batches hold one caption per image, drawn afresh each epoch from the image's captions (N = B); evaluation
batches hold every caption of each image (N ~ 5 B), the COCO retrieval protocol. The vocabulary (words seen at
least ``min_word_count`` times in the training captions, plus ``<pad> <start> <end> <unk>``) is built in ``setup``,
unless a model brings the one it was trained with (``set_vocabulary``): a model keeps its vocabulary in its
checkpoint, so ``dl4 test`` and caption generation use the ids it learned.
"""

import contextlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from dl4.data_root import DatasetNotFoundError, default_data_dir
from datamodules.integrity import CorruptDataError
from datamodules.tensors import EpochOrder, eval_sampler
from datamodules.user_inputs import image_files, read_image, user_lines
from dl4.errors import ConfigError, InputError, check_positive
from dl4.text import decode

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GET_COCO = ("MS-COCO: the captions annotations and images from https://cocodataset.org/#download (2017 Train/Val "
            "annotations, 2017 Train and Val images), unpacked so that annotations/ and train2017/ are side by side")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers (a regular expression; the VSE++ code uses NLTK's word_tokenize, which also
    keeps punctuation as tokens, and is one more dependency for what the ranking does not need)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class Vocabulary:
    """Words <-> ids; id 0 is ``<pad>``. ``encode`` adds ``<start>`` and ``<end>``, unknown words are ``<unk>``."""

    def __init__(self, words: list[str]):
        if words[:4] != [PAD, START, END, UNK]:
            raise ConfigError(f"a vocabulary starts with {PAD} {START} {END} {UNK}, got {words[:4]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: list[list[str]], min_count: int) -> "Vocabulary":
        counts = Counter(w for caption in captions for w in caption)
        return cls([PAD, START, END, UNK] + sorted(w for w, c in counts.items() if c >= min_count))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> list[int]:
        unk = self.index[UNK]
        return [self.index[START]] + [self.index.get(w, unk) for w in words] + [self.index[END]]

    def decode(self, ids) -> str:
        """Ids -> text, up to the first ``<end>``, without ``<start>`` and ``<pad>``."""
        return decode(ids, self.words)


class CaptionSplit:
    """One split's images (ids, files) and their tokenised captions, images in id order."""

    def __init__(self, image_ids: list[int], paths: list[Path], captions: list[list[str]],
                 caption_ids: list[list[int]], texts: list[list[str]]):
        self.image_ids, self.paths, self.captions, self.caption_ids = image_ids, paths, captions, caption_ids
        self.texts = texts  # the raw captions: the references of BLEU and CIDEr

    def __len__(self) -> int:
        return len(self.image_ids)


def read_coco(annotation_file: Path) -> COCO:
    """pycocotools' COCO index of a captions file, quietly; a missing or malformed file says which and why."""
    if not annotation_file.is_file():
        raise DatasetNotFoundError(f"COCO captions not found: {annotation_file} does not exist. Get {GET_COCO}, "
                                   f"and point the data root (DL4_DATA_DIR) or data.init_args.root at the folder")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(annotation_file))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise CorruptDataError(f"{annotation_file} is not an MS-COCO captions file ({type(err).__name__}: {err}); "
                               f"restore it from {GET_COCO}") from None
    for kind, keys in (("images", ("id", "file_name")), ("annotations", ("image_id", "id", "caption"))):
        for entry in coco.dataset.get(kind) or []:
            if not isinstance(entry, dict) or any(k not in entry for k in keys):
                raise CorruptDataError(f"{annotation_file} is not an MS-COCO captions file: an entry of "
                                       f"'{kind}' lacks one of {', '.join(keys)} ({str(entry)[:80]}); restore it "
                                       f"from {GET_COCO}")
    return coco


def coco_split(coco, folder: Path, image_ids: list[int] | None = None) -> CaptionSplit:
    """The images of ``coco`` (or only ``image_ids``), files in ``folder``, with their captions."""
    ids = sorted(coco.imgs) if image_ids is None else image_ids
    paths, captions, caption_ids, texts = [], [], [], []
    for i in ids:
        anns = sorted(coco.imgToAnns[i], key=lambda a: a["id"])
        if not anns:
            raise CorruptDataError(f"image {i} ({coco.imgs[i]['file_name']}) has no caption in its annotation file")
        paths.append(folder / coco.imgs[i]["file_name"])
        captions.append([tokenize(a["caption"]) for a in anns])
        caption_ids.append([a["id"] for a in anns])
        texts.append([a["caption"] for a in anns])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{len(missing)} of {len(paths)} images listed in the annotations are not in "
                                   f"{folder} (the first: {missing[0].name}); get {GET_COCO}")
    return CaptionSplit(ids, paths, captions, caption_ids, texts)


class CaptionedImages(Dataset):
    """The items of a split: index ``i`` gives image i with all its captions; ``(i, c)`` gives it with caption c.

    The image comes from ``source``: a list of files (decoded here, in a DataLoader worker, then ``transform``), a
    uint8 tensor (N, 3, S, S) already decoded, or a float tensor of features (N, F)."""

    def __init__(self, split: CaptionSplit, vocabulary: Vocabulary, source, transform=None):
        self.split, self.vocabulary, self.source, self.transform = split, vocabulary, source, transform

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        if torch.is_tensor(self.source):
            return self.source[i]
        path = self.source[i]
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)  # decode_jpeg for JPEGs
        except RuntimeError as err:
            raise CorruptDataError(f"{path} does not decode as an image ({err}); restore it from {GET_COCO}") from None
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index):
        i, chosen = (index, None) if isinstance(index, int) else index
        numbers = range(len(self.split.captions[i])) if chosen is None else [chosen]
        return {"image": self.image(i), "image_id": self.split.image_ids[i],
                "captions": [self.vocabulary.encode(self.split.captions[i][c]) for c in numbers],
                "caption_ids": [self.split.caption_ids[i][c] for c in numbers]}


def collate_captions(items: list[dict]) -> dict:
    """Stack the images; pad every caption of the batch to the longest, with ``owner`` pointing at its image."""
    captions = [torch.tensor(c) for item in items for c in item["captions"]]
    return {"images": torch.stack([item["image"] for item in items]),
            "tokens": torch.nn.utils.rnn.pad_sequence(captions, batch_first=True, padding_value=0),
            "lengths": torch.tensor([len(c) for c in captions]),
            "owner": torch.tensor([k for k, item in enumerate(items) for _ in item["captions"]]),
            "image_id": torch.tensor([item["image_id"] for item in items]),
            "caption_id": torch.tensor([c for item in items for c in item["caption_ids"]])}


class CaptionShuffle(EpochOrder):
    """Each epoch: the images in a new random order, each with one of its captions drawn at random; both drawn from
    ``seed + epoch`` (``seed_everything``'s seed by default), so a resumed run sees the same pairs."""

    def __init__(self, captions_per_image: list[int], seed: int | None = None):
        super().__init__(len(captions_per_image))
        self.counts = captions_per_image
        self.seed = torch.initial_seed() % 2**62 if seed is None else seed

    def order(self) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = (torch.rand(self.n, generator=g) * torch.tensor(self.counts)).long().tolist()
        return [(i, chosen[i]) for i in torch.randperm(self.n, generator=g).tolist()]


class CocoCaptionsDataModule(L.LightningDataModule):
    """MS-COCO-format captions (COCO 2014 or 2017, the Karpathy split, or any dataset written in that format, such
    as MNIST captions).

    Args:
        root: the dataset's folder, holding ``annotations/`` and the image folders; a relative path is under the
            data root (``$DL4_DATA_DIR``, default ``./data``).
        train_split, val_split, test_split: the splits' names (``captions_<name>.json`` and the folder ``<name>/``).
            COCO 2017 has no public test captions: the test split defaults to val2017.
        karpathy_split: Karpathy's ``dataset_coco.json`` (relative to ``root``); then the splits are its train (with
            restval), val and test, read from captions_train2014.json and captions_val2014.json.
        features: a folder (relative to ``root``) of precomputed image features, ``<split>.npy`` with one row per
            image in image-id order (as ``dl4/features.py`` writes them, and as VSE++'s ``*_precomp`` folders
            hold them): batches then carry features instead of images, and no image is read.
        image_size, resize: images are resized (shorter side to ``resize``, default ``image_size * 8 / 7``: 256 for
            224) and cropped to ``image_size``: at random for training with ``random_crop`` (and flipped at random
            with ``flip``), else in the centre.
        normalize: subtract ImageNet's mean and divide by its std (for torchvision backbones).
        in_memory: decode every image once in ``setup`` and keep the uint8 tensors (small datasets).
        min_word_count: a training word seen fewer times is ``<unk>``.
        batch_size, eval_batch_size, num_workers: the loaders' (images are decoded in the workers).
        predict_path: ``dl4 predict``'s images: a folder (or one image), preprocessed as the evaluation's are; each
            gets its generated caption and its ``predict_top_k`` nearest training captions.
        predict_sentences: a text file, one sentence a line: each gets its nearest images of ``predict_path``.
        predict_queries: a text file of embedding arithmetic, one query a line: ``<image file> - word + word`` (any
            number of terms; the image is one of ``predict_path``'s): each gets its nearest images there.
        predict_top_k: how many captions or images each gets.
    """

    def __init__(self, root: str = "coco", train_split: str = "train2017", val_split: str = "val2017",
                 test_split: str | None = None, karpathy_split: str | None = None, features: str | None = None,
                 image_size: int = 224, resize: int | None = None, random_crop: bool = True, flip: bool = False,
                 normalize: bool = True,
                 in_memory: bool = False, min_word_count: int = 4, batch_size: int = 128, eval_batch_size: int = 128,
                 num_workers: int = 2, data_dir: str | None = None, predict_path: str | None = None,
                 predict_sentences: str | None = None, predict_queries: str | None = None, predict_top_k: int = 5):
        super().__init__()
        check_positive("data", image_size=image_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
                       min_word_count=min_word_count, resize=resize, predict_top_k=predict_top_k)
        if (predict_queries or predict_sentences) and not predict_path:
            raise ConfigError(f"data.predict_{'queries' if predict_queries else 'sentences'}: give data.predict_path "
                              "too, the folder of images they retrieve from")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        if in_memory and (random_crop or flip):
            raise ConfigError("data.in_memory keeps each image decoded at one crop: set data.random_crop and "
                              "data.flip to false with it")
        root_path = Path(root)
        self.root = root_path if root_path.is_absolute() else Path(data_dir or default_data_dir()) / root_path
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        if karpathy_split:
            self.splits = {"train": "train", "val": "val", "test": "test"}
        self.karpathy_split, self.features = karpathy_split, features
        self.image_size, self.resize, self.random_crop = image_size, resize, random_crop
        self.flip, self.normalize = flip, normalize
        self.in_memory, self.min_word_count = in_memory, min_word_count
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.vocabulary: Vocabulary | None = None
        self.data: dict[str, CaptionSplit] = {}
        self.datasets: dict[str, CaptionedImages] = {}
        self._coco: dict = {}
        self.predict_path, self.predict_sentences, self.predict_queries = predict_path, predict_sentences, predict_queries
        self.predict_top_k = predict_top_k
        self.predict_names = self.predict_info = self.predict_images = None

    # reading
    def coco(self, split: str):
        """pycocotools' index of a split's annotation file (``captions_<name>.json``)."""
        name = self.splits.get(split, split)
        if name not in self._coco:
            self._coco[name] = read_coco(self.root / "annotations" / f"captions_{name}.json")
        return self._coco[name]

    def read_split(self, split: str) -> CaptionSplit:
        if not self.karpathy_split:
            return coco_split(self.coco(split), self.root / self.splits[split])
        file = self.root / self.karpathy_split
        if not file.is_file():
            raise DatasetNotFoundError(f"the Karpathy split {file} does not exist: get dataset_coco.json from "
                                       "https://cs.stanford.edu/people/karpathy/deepimagesent/ (coco.zip)")
        wanted = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}[split]
        try:
            entries = [e for e in json.loads(file.read_text())["images"] if e["split"] in wanted]
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptDataError(f"{file} is not Karpathy's dataset_coco.json ({err})") from None
        parts = []
        for folder in ("train2014", "val2014"):
            ids = sorted(e["cocoid"] for e in entries if e["filepath"] == folder)
            if ids:
                parts.append(coco_split(self.coco(folder), self.root / folder, ids))
        merged = CaptionSplit([], [], [], [], [])
        for part in parts:
            for key in ("image_ids", "paths", "captions", "caption_ids", "texts"):
                getattr(merged, key).extend(getattr(part, key))
        return merged

    def prepare_data(self):
        for split in ("train",) if self.own_inputs() else ("train", "val", "test"):
            self.read_split(split)  # says what is missing before any run is created

    def own_inputs(self) -> bool:
        """True when ``dl4 predict`` runs on the user's images and sentences: only the training captions are read."""
        return bool(self.predict_path or self.predict_sentences) and self.trainer is not None and \
            self.trainer.predicting

    def read_predict_inputs(self) -> None:
        """The user's images (uint8, cropped as the evaluation's), sentences and queries, checked."""
        self.predict_names, self.predict_items = [], []
        files = []
        if self.predict_path and self.features:
            raise ConfigError("data.predict_path: this model reads precomputed features (data.features), not images; "
                              "predict with a model trained on images (an image_encoder such as TorchvisionEncoder)")
        if self.predict_path:
            files = image_files(self.predict_path)
            resize = self.resize or round(self.image_size * 8 / 7)
            crop = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(self.image_size)])
            self.predict_images = torch.stack([crop(read_image(f, ImageReadMode.RGB)) for f in files])
            self.predict_names += [f.name for f in files]
            self.predict_items += [{"kind": "image", "image": i} for i in range(len(files))]
        for number, line in user_lines(self.predict_sentences):
            self.predict_names.append(line)
            self.predict_items.append({"kind": "sentence", "words": tokenize(line)})
        index = {f.name: i for i, f in enumerate(files)}
        for number, line in user_lines(self.predict_queries):
            terms = re.findall(r"([+-])\s*([^\s+-]+)", line.split(None, 1)[1] if " " in line else "")
            image = line.split(None, 1)[0]
            if image not in index or not terms:
                why = f"{image} is not an image of {self.predict_path}" if image not in index else "no '- word' or '+ word'"
                raise InputError(f"{self.predict_queries}, line {number}: {why}; write '<image file> - word + word'")
            self.predict_names.append(line)
            self.predict_items.append({"kind": "query", "image": index[image],
                                       "minus": [w.lower() for sign, w in terms if sign == "-"],
                                       "plus": [w.lower() for sign, w in terms if sign == "+"]})

    def predict_pool(self, device) -> dict:
        """What the answers are chosen from: the folder's images (as a batch step gets them), and every distinct
        training caption (tokens, lengths, text)."""
        images = None
        if self.predict_images is not None:
            images = self.on_after_batch_transfer({"images": self.predict_images.to(device)}, 0)["images"]
        texts = sorted({" ".join(c) for cs in self.data["train"].captions for c in cs})
        encoded = [torch.tensor(self.vocabulary.encode(t.split())) for t in texts]
        return {"images": images, "texts": texts, "tokens": torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True),
                "lengths": torch.tensor([len(c) for c in encoded])}

    def predict_dataloader(self):
        """One input a batch, its words as ids of the model's vocabulary (restored by now); ``predict_info`` notes
        the words that vocabulary lacks (read as ``<unk>``; a query with one is not answered)."""
        self.predict_info = []
        for item in self.predict_items:
            words = item.get("words", []) + item.get("minus", []) + item.get("plus", [])
            unknown = sorted({w for w in words if w not in self.vocabulary.index})
            note = {}
            if unknown:
                note = {"note": f"not in the model's vocabulary: {', '.join(unknown)} (" +
                        ("not answered)" if item["kind"] == "query" else "read as <unk>)")}
            self.predict_info.append(note)
            if item["kind"] == "sentence":
                item["tokens"] = torch.tensor(self.vocabulary.encode(item["words"]))
        return DataLoader(self.predict_items, batch_size=1, sampler=eval_sampler(self.predict_items),
                          collate_fn=lambda items: items[0])

    def setup(self, stage: str | None = None):
        if stage == "predict" and not self.own_inputs():
            raise ConfigError("dl4 predict of a VSE needs inputs: data.init_args.predict_path (a folder of images), "
                              "with predict_sentences and predict_queries if you like (docs/predict.md)")
        if self.own_inputs():
            self.data["train"] = self.data.get("train") or self.read_split("train")
            if self.vocabulary is None:  # the model's own replaces it (VSE.setup)
                self.vocabulary = Vocabulary.build([c for cs in self.data["train"].captions for c in cs],
                                                   self.min_word_count)
            return self.read_predict_inputs()
        for split in ("train", "val", "test"):
            if split not in self.data:
                self.data[split] = self.read_split(split)
        if self.vocabulary is None:
            self.vocabulary = Vocabulary.build([c for cs in self.data["train"].captions for c in cs],
                                               self.min_word_count)
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = CaptionedImages(self.data[split], self.vocabulary, *self._source(split))

    def set_vocabulary(self, words: list[str]) -> None:
        """Use a model's vocabulary (the one its checkpoint keeps) instead of building one."""
        self.vocabulary = Vocabulary(words)
        for dataset in self.datasets.values():
            dataset.vocabulary = self.vocabulary

    def _source(self, split: str):
        data = self.data[split]
        if self.features:
            file = self.root / self.features / f"{self.splits[split]}.npy"
            if not file.is_file():
                raise DatasetNotFoundError(f"precomputed features not found: {file} (write them with "
                                           f"python -m datamodules.coco_captions features)")
            rows = torch.from_numpy(np.load(file)).float()
            if rows.ndim != 2 or len(rows) != len(data):
                raise CorruptDataError(f"{file} holds {tuple(rows.shape)} features; the {split} split has "
                                       f"{len(data)} images, one row each in image-id order")
            return rows, None
        resize = self.resize or round(self.image_size * 8 / 7)
        if split == "train" and self.random_crop:
            steps = [v2.Resize(resize, antialias=True), v2.RandomCrop(self.image_size)]
            transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if self.flip else []))
        else:
            transform = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(self.image_size)])
        if not self.in_memory:
            return data.paths, transform
        decoding = DataLoader(CaptionedImages(data, Vocabulary([PAD, START, END, UNK]), data.paths, transform),
                              batch_size=256, num_workers=self.num_workers, collate_fn=collate_captions)
        return torch.cat([batch["images"] for batch in decoding]), None

    # loaders
    def loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        workers = 0 if self.in_memory or self.features else self.num_workers
        sampler = CaptionShuffle([len(c) for c in dataset.split.captions]) if shuffle else None
        return StatefulDataLoader(dataset, batch_size=self.batch_size if shuffle else self.eval_batch_size,
                                  sampler=sampler, drop_last=shuffle, num_workers=workers,
                                  collate_fn=collate_captions, persistent_workers=workers > 0,
                                  generator=torch.Generator())

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val", shuffle=False)

    def test_dataloader(self):
        return self.loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images = batch.get("images")
        if images is not None and images.dtype == torch.uint8:
            images = images.float() / 255
            if self.normalize:
                mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
                std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
                images = (images - mean) / std
        return {**batch, "images": images}

    # what the pictures and the evaluation need
    def fixed_batch(self, n: int, seed: int = 0, device=None, split: str = "val") -> dict:
        """The first ``n`` images of a split with all their captions, as an evaluation step gets them."""
        dataset = self.datasets[split]
        batch = collate_captions([dataset[i] for i in range(min(n, len(dataset)))])
        batch = self.transfer_batch_to_device(batch, torch.device(device or "cpu"), 0)
        return self.on_after_batch_transfer(batch, 0)

    def all_captions(self, split: str = "val") -> dict:
        """Every caption of a split (tokens, lengths, the image id each belongs to, its text), no images."""
        data = self.data[split]
        encoded = [torch.tensor(self.vocabulary.encode(c)) for cs in data.captions for c in cs]
        return {"tokens": torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True),
                "lengths": torch.tensor([len(c) for c in encoded]),
                "image_id": torch.tensor([i for i, cs in zip(data.image_ids, data.captions) for _ in cs]),
                "text": [t for ts in data.texts for t in ts]}

    def references(self, split: str) -> dict[int, list[str]]:
        """The reference captions of every image of a split, by image id, tokenised as the vocabulary's words are
        (for BLEU and CIDEr)."""
        data = self.data[split]
        return {i: [" ".join(tokenize(t)) for t in texts] for i, texts in zip(data.image_ids, data.texts)}

    def state_dict(self):
        return {"vocabulary": self.vocabulary.words} if self.vocabulary is not None else {}

    def load_state_dict(self, state):
        if state.get("vocabulary"):
            self.set_vocabulary(state["vocabulary"])
