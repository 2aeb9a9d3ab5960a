"""The visual-semantic embedding learns on real MNIST captions; its vocabulary travels with its checkpoint; under
DDP it draws once and its retrieval and caption numbers are the single-process ones; and its pictures and table
reach the offline W&B run."""

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import CAPTION_SIZE_ARGS as SIZE_ARGS
from conftest import CONFIGS, assert_ddp_validation_is_one_process, build_from_config, ddp_fit, dl4
from lightning_models import VSE
from lightning_models.nn.vse import CaptionDecoder, SentenceEncoder, SmallCNN
from dl4.wandb_records import artifacts, history

SEED = int(os.environ.get("VSE_SEED", 0))  # the seed of the learning test (its docstring: seeds 0, 1, 2)


def _fit(config: str, root, mnist_root, steps: int, *overrides: str):
    run = build_from_config(CONFIGS / config, f"--seed_everything={SEED}", f"--data.init_args.root={root}",
                            f"--data.init_args.data_dir={mnist_root}", "--data.init_args.batch_size=64", *SIZE_ARGS,
                            *overrides)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(run.model, run.datamodule)
    return trainer, run


@torch.no_grad()
def caption_loss_with_own_and_other_images(model, dm, images, image_ids, split="test") -> tuple[float, float]:
    """The decoder's teacher-forced loss (nats per word) on the split's captions, conditioned on each caption's own
    image, and on another image (the images shifted by one): a decoder that ignores the image scores the same."""
    captions = dm.all_captions(split)
    row = {int(i): r for r, i in enumerate(image_ids)}
    owner = torch.tensor([row[int(i)] for i in captions["image_id"]])
    x = model.eval().image_codes(images)
    other = (owner + 1) % len(image_ids)
    return (model.caption_loss(x[owner], captions["tokens"]).item(),
            model.caption_loss(x[other], captions["tokens"]).item())


@pytest.mark.slow
def test_vse_learns_retrieval_then_captions_on_its_frozen_embedding(captions_root, mnist_root, tmp_path):
    """Stage 1, 150 steps of the embedding (batch 64) on 1,500 training images; stage 2, 150 steps of the decoder
    on that embedding, which stays as it was (about 35 s). On the 101 test images and their 505 captions:

    - Retrieval. The trivial models: chance (R@5 about 5% both ways), the untrained network (computed here), and
      constant scores, which rank last (R@K = 0: a tie counts against the query). Measured, seeds 0 / 1 / 2
      (``VSE_SEED=1 python -m pytest --full -s -k learns_retrieval``): untrained R@5 about 3 / 6% (image -> text /
      text -> image), trained 63.4 / 78.8, 60.4 / 78.8 and 71.3 / 84.8. Bar: 30 points above the untrained network
      both ways.
    - Captions. At this budget the generated captions are not yet right: none states every digit, colour and
      relation, and fewer name the right digits (2%) than the best fixed sentence does (5.9%), though BLEU-1 is
      71 (the phrasing is learnt first; the results page's captions are 92% right after 40 + 10 epochs). What is
      learnt is that the decoder reads the image: its teacher-forced loss on each caption given its own image,
      against the same caption given another test image (what a decoder that ignores the image scores alike).
      Measured, seeds 0 / 1 / 2: 0.972 / 1.925, 0.968 / 1.969 and 0.974 / 1.896 nats per word. Bar: 0.5 lower with
      the caption's own image."""
    untrained = build_from_config(CONFIGS / "vse_mnist_captions.yaml", f"--seed_everything={SEED}",
                                  f"--data.init_args.root={captions_root}", f"--data.init_args.data_dir={mnist_root}",
                                  *SIZE_ARGS)
    (chance,) = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        untrained.model, untrained.datamodule, verbose=False)
    trainer, run = _fit("vse_mnist_captions.yaml", captions_root, mnist_root, 150)
    # the config's optimizer trains the layers the model builds in setup (W_T and the output layer: the vocabulary's
    # size), which LightningCLI's own optimizer, built before setup, leaves out
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(run.model.W_T.weight), id(run.model.out.weight)} <= optimised
    assert all(id(p) in optimised for p in run.model.parameters())
    retrieval = trainer.test(run.model, run.datamodule, verbose=False)[0]
    for direction in ("i2t", "t2i"):
        key = f"test/{direction}_r5"
        assert retrieval[key] > chance[key] + 30, (direction, chance[key], retrieval[key])
    trainer.save_checkpoint(tmp_path / "embedding.ckpt")
    embedding = {k: v.clone() for k, v in run.model.state_dict().items() if k.startswith(VSE.EMBEDDING)}
    trainer, run = _fit("vse_mnist_captions_decoder.yaml", captions_root, mnist_root, 150,
                        f"--model.init_args.embedding_from={tmp_path / 'embedding.ckpt'}",
                        "--model.init_args.beam_width=1")
    trainer.save_checkpoint(tmp_path / "decoder.ckpt")
    assert VSE.load_from_checkpoint(tmp_path / "decoder.ckpt").hparams.embedding_from is None  # the weights are in it
    after = run.model.state_dict()
    assert [k for k, v in embedding.items() if not torch.equal(after[k], v)] == []  # batch norm statistics too
    metrics = trainer.test(run.model, run.datamodule, verbose=False)[0]
    dm, test_set = run.datamodule, run.datamodule.datasets["test"]
    with torch.no_grad():
        images = dm.on_after_batch_transfer({"images": test_set.source}, 0)["images"]
    own, other = caption_loss_with_own_and_other_images(run.model, dm, images, test_set.split.image_ids)
    print(f"VSE seed {SEED}: R@5 untrained {chance['test/i2t_r5']:.1f} / {chance['test/t2i_r5']:.1f}, trained "
          f"{retrieval['test/i2t_r5']:.1f} / {retrieval['test/t2i_r5']:.1f}; caption loss {own:.3f} / {other:.3f}")
    assert own < other - 0.5, (own, other)
    same = [k for k in retrieval if "i2t" in k or "t2i" in k]
    assert {k: metrics[k] for k in same} == {k: retrieval[k] for k in same}  # the same space


def test_embedding_from_says_what_is_wrong(captions_root, mnist_root, tmp_path):
    with pytest.raises(ValueError, match="needs a model.decoder and model.ranking_weight: 0"):
        VSE(SmallCNN(16, [4], 8), SentenceEncoder(3, 8), CaptionDecoder(3, 8, 8), freeze_embedding=True)
    with pytest.raises(ValueError, match="embedding_from: .*nothing.ckpt does not exist"):  # before any run
        VSE(SmallCNN(16, [4], 8), SentenceEncoder(3, 8), CaptionDecoder(3, 8, 8), embedding_from="nothing.ckpt")
    trainer, _ = _fit("vse_mnist_captions.yaml", captions_root, mnist_root, 1)
    trainer.save_checkpoint(tmp_path / "embedding.ckpt")
    with pytest.raises(ValueError, match="holds other networks than the config's"):
        _fit("vse_mnist_captions_decoder.yaml", captions_root, mnist_root, 1,
             f"--model.init_args.embedding_from={tmp_path / 'embedding.ckpt'}",
             "--model.init_args.sentence_encoder.init_args.hidden_size=128",
             "--model.init_args.decoder.init_args.image_size=128")


def test_the_vocabulary_is_built_from_the_data_then_kept_in_the_checkpoint(captions_root, mnist_root, tmp_path):
    run = build_from_config(CONFIGS / "vse_mnist_captions.yaml", f"--data.init_args.root={captions_root}",
                            f"--data.init_args.data_dir={mnist_root}", *SIZE_ARGS)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(run.model, run.datamodule)
    assert run.model.vocabulary == run.datamodule.vocabulary.words and "seven" in run.model.vocabulary
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = VSE.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert loaded.vocabulary == run.model.vocabulary and loaded.W_T.num_embeddings == len(run.model.vocabulary)
    with pytest.raises(ValueError, match="vocabulary differs"):
        loaded.set_vocabulary(run.model.vocabulary[:-1])


def test_word_vectors_from_a_glove_file_initialise_w_t_frozen(tmp_path):
    (tmp_path / "glove.txt").write_text("red 1 2 3\nseven 4 5 6\nunused 0 0 0\n")
    words = ["<pad>", "<start>", "<end>", "<unk>", "red", "seven", "blue"]
    model = VSE(SmallCNN(16, [4], 8), SentenceEncoder(3, 8), CaptionDecoder(3, 8, 8), vocabulary=words,
                word_vectors=str(tmp_path / "glove.txt"))
    assert model.W_T.weight[4].tolist() == [1, 2, 3] and model.W_T.weight[5].tolist() == [4, 5, 6]
    assert not model.W_T.weight.requires_grad
    (tmp_path / "bad.txt").write_text("red 1 2\n")
    with pytest.raises(ValueError, match="bad.txt line 1 has 2 numbers"):
        VSE(SmallCNN(16, [4], 8), SentenceEncoder(3, 8), vocabulary=words, caption_weight=0,
            word_vectors=str(tmp_path / "bad.txt"))


def test_fit_logs_table_and_pictures_to_wandb(captions_root, mnist_root, tmp_path):
    """`dl4 fit` of both stages (1 epoch each, the configs' W&B logger offline): the retrieval table with the
    generated captions and the caption scores are in both runs, the arithmetic panel and the embedding map in
    stage 1's."""
    data = [f"--data.init_args.root={captions_root}", f"--data.init_args.data_dir={mnist_root}", *SIZE_ARGS,
            "--data.init_args.eval_batch_size=20", "--trainer.enable_progress_bar=false"]
    fit = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3"]
    logged, tables = {}, {}
    for stage, config in (("embedding", "vse_mnist_captions.yaml"), ("decoder", "vse_mnist_captions_decoder.yaml")):
        more = [f"--model.init_args.embedding_from={next((tmp_path / 'embedding').rglob('last.ckpt'))}"
                ] if stage == "decoder" else []
        out = dl4("fit", "--config", CONFIGS / config, *data, *fit, *more, f"--trainer.logger.init_args.save_dir={stage}",
                  cwd=tmp_path, data_root=mnist_root)
        assert out.returncode == 0, out.stderr[-3000:]
        (run_dir,) = (tmp_path / stage / "wandb").glob("offline-run-*")
        logged[stage] = {k: v for row in history(run_dir) for k, v in row.items()}
        assert logged[stage]["media/vse_retrieval/_type"] == "table-file"
        assert logged[stage]["media/vse_retrieval/nrows"] == 8
        # a table with images is logged as an artifact: its JSON and the 8 query images, staged for `wandb sync`
        (table,) = [a for a in artifacts(run_dir) if a.type == "run_table" and "vse_retrieval" in a.name]
        files = {c.path: c.local_path for c in table.manifest.contents}
        assert sum(p.endswith(".png") for p in files) == 8
        tables[stage] = json.loads(Path(next(v for k, v in files.items() if k.endswith(".table.json"))).read_text())
        assert tables[stage]["columns"] == ["image", "image_id", "top 5 captions", "generated"]
        assert all(row[0]["_type"] == "image-file" and row[2].count("\n") == 4 for row in tables[stage]["data"])
    for picture in ("vse_arithmetic", "vse_map"):
        assert logged["embedding"][f"media/{picture}/_type"] == "images/separated"
        assert logged["embedding"][f"media/{picture}/count"] == 1
    assert all(isinstance(row[3], str) for stage in tables.values() for row in stage["data"])  # generated
    for stage in logged.values():
        assert {"val/i2t_r1", "val/t2i_r5", "val/cider", "val/bleu4", "val/caption_accuracy"} <= stage.keys()


def test_ddp_trains_draws_once_and_validates_as_one_process(captions_root, mnist_root, tmp_path):
    """Stage 1 on 2 processes (DDP, gloo): the retrieval table is written once (rank zero), and every retrieval and
    caption number of the last validation (80 images: 2 batches of 20 on each process) is the one a single process
    computes from the checkpoint on the same 80 images."""
    data = [f"--data.init_args.root={captions_root}", f"--data.init_args.data_dir={mnist_root}", *SIZE_ARGS,
            "--data.init_args.eval_batch_size=20"]
    run = ddp_fit(CONFIGS / "vse_mnist_captions.yaml", tmp_path, mnist_root, *data)
    assert len(list((run / "media").glob("media_vse_retrieval_step*.csv"))) == 1  # epochs 0 and 1, every 2: once
    logged = assert_ddp_validation_is_one_process(run, CONFIGS / "vse_mnist_captions.yaml", *data)
    assert {"val/i2t_r1", "val/t2i_r5", "val/rsum", "val/cider", "val/caption_accuracy"} <= logged.keys()
