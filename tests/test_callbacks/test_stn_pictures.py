"""The transformer's pictures: the drawn outline is where the grid samples, and they reach W&B, once under DDP."""

import torch
from PIL import Image

from callbacks.pictures import grid_outline, region_pictures, to_pixels
from conftest import CONFIGS, assert_ddp_validation_is_one_process, ddp_fit, dl4
from lightning_models.nn.stn import affine_grid, target_grid
from dl4.wandb_records import history


def test_the_identity_grids_outline_runs_through_the_border_pixels():
    outline = to_pixels(grid_outline(target_grid(42, 28).view(1, 42, 28, 2)), 42, 28)[0]
    for axis, last in ((0, 27), (1, 41)):  # the first and the last pixel centre of each axis
        assert abs(outline[..., axis].min().item()) < 1e-4 and abs(outline[..., axis].max().item() - last) < 1e-4
    torch.testing.assert_close(outline[0], outline[-1])  # closed


def test_the_red_box_of_a_zoom_on_the_centre_is_the_centre_half_of_the_input():
    U = torch.zeros(1, 1, 40, 40)
    theta = torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]])  # samples the centre 20 x 20 pixels
    grid = affine_grid(theta, (1, 1, 40, 40))
    picture = region_pictures(U, U, grid, zoom=4)[0]
    red = (picture[0] > 200) & (picture[1] < 50)
    rows, cols = red.nonzero().unbind(1)
    # the outermost samples lie at input pixels 9.75 and 29.25 (x_n = 0.5 (2i + 1) / 40 - 0.5), zoomed 4 times
    # (p + 0.5) 4 - 0.5: 40.5 and 118.5, drawn as dots of radius 1
    for axis in (rows, cols):
        assert axis.min().item() == 39 and axis.max().item() == 119


def test_fit_logs_the_regions_and_theta_to_offline_wandb(tmp_path, mnist_root):
    out = dl4("fit", "--config", CONFIGS / "st_cnn_tps_rts_mnist.yaml", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
              "--trainer.callbacks+=TransformerPictures", "--trainer.callbacks.every_n_epochs=1",
              cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    rows = history(run_dir)
    for image, width in (("media/st_regions", 8 * (4 * 42 + 2) + 2), ("media/st_theta", 100)):
        logged = [row for row in rows if f"{image}/_type" in row]
        assert logged, f"{image} not logged"
        (name,) = logged[-1][f"{image}/filenames"]
        with Image.open(run_dir / "files" / name) as png:
            assert png.size[0] >= width


def test_ddp_on_two_processes_draws_the_regions_once(tmp_path, mnist_root):
    small = ["--data.init_args.batch_size=64", "--data.init_args.eval_batch_size=250"]  # the same code, a quarter of it
    run = ddp_fit(CONFIGS / "st_cnn_rts_mnist.yaml", tmp_path, mnist_root, *small)
    assert "val/error" in assert_ddp_validation_is_one_process(run, CONFIGS / "st_cnn_rts_mnist.yaml", *small,
                                                               data_root=mnist_root)
    assert len(list((run / "media" / "media_st_regions").glob("*.png"))) == 1  # epochs 0 and 1, every 2: once
    assert len(list((run / "media" / "media_st_theta").glob("*.png"))) == 1
    assert "val/error" in (run / "metrics.csv").read_text()
