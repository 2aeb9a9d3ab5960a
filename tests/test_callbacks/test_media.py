"""Picture callbacks: the same images reach files, TensorBoard and W&B (once under DDP: the DAE's test in
tests/test_dl4/test_clusters.py, torchrun's)."""

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from callbacks import DecoderFilters, LatentInterpolation, PriorSamples, ReconstructionGrid
from lightning_models import VAE, DenoisingAutoencoder, SparseAutoencoder


def short_fit(model, mnist, logger, callbacks, root):
    L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=logger, callbacks=callbacks,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=root).fit(model, mnist)


def test_images_without_an_image_logger_go_to_png_files(mnist, tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    short_fit(VAE(), mnist, logger, [ReconstructionGrid(num_images=8), PriorSamples(num_samples=16),
                                     LatentInterpolation(every_n_epochs=2, num_pairs=2, steps=5)], tmp_path)
    media = tmp_path / "run" / "version_0" / "media"
    recon = sorted((media / "media_reconstructions").glob("*.png"))
    assert len(recon) == 2  # every epoch
    assert len(list((media / "media_latent_interpolation").glob("*.png"))) == 1  # every second epoch
    with Image.open(recon[0]) as im:
        assert im.size == (8 * 30 + 2, 2 * 30 + 2)  # 8 columns of 28 px + padding; inputs and reconstructions
    with Image.open(next((media / "media_prior_samples").glob("*.png"))) as im:
        assert im.size == (8 * 30 + 2, 2 * 30 + 2)


def test_denoising_grid_shows_the_corrupted_inputs(mnist, tmp_path):
    short_fit(DenoisingAutoencoder(noise_level=0.5), mnist, CSVLogger(tmp_path, name="run"),
              [ReconstructionGrid(num_images=4)], tmp_path)
    png = next((tmp_path / "run" / "version_0" / "media" / "media_reconstructions").glob("*.png"))
    with Image.open(png) as im:
        assert im.size[1] == 3 * 30 + 2  # inputs, corrupted inputs, reconstructions


def test_images_reach_tensorboard(mnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    short_fit(SparseAutoencoder(), mnist, logger, [ReconstructionGrid(), DecoderFilters(num_filters=25)], tmp_path)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"media/reconstructions", "media/decoder_filters"} <= set(events.Tags()["images"])
    assert len(events.Images("media/decoder_filters")) == 2
    assert events.Images("media/decoder_filters")[0].width == 5 * 30 + 2
