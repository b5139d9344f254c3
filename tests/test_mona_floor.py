"""Mona's floor estimate (benchmarks/harness/floor.py): the counts come from the model, the arithmetic is exact."""

import dataclasses

import pytest
import torch
from conftest import TINY_IMAGE_SIZE, TINY_SWIN_CONFIG, build_tiny_pixel_values, build_tiny_swin, build_tiny_vit
from harness.floor import MonaSite, floor_seconds, measure_rates, mona_floor, mona_sites
from peft import get_peft_model

import mona_peft


def test_sites_follow_the_swin_stages():
    model = get_peft_model(build_tiny_swin(), mona_peft.MonaConfig(inner_dim=8))
    sites = mona_sites(model, build_tiny_pixel_values(batch=3))
    expected = []
    grid = TINY_IMAGE_SIZE // TINY_SWIN_CONFIG["patch_size"]
    for stage, depth in enumerate(TINY_SWIN_CONFIG["depths"]):
        side, width = grid // 2**stage, TINY_SWIN_CONFIG["embed_dim"] * 2**stage
        expected += [MonaSite(3 * side * side, 3 * side * side, width, 8, 7)] * (2 * depth)  # two sites per block
    assert sites == expected


def test_sites_count_prefix_tokens_but_filter_only_the_grid():
    model = get_peft_model(build_tiny_vit(), mona_peft.MonaConfig(inner_dim=4, kernel_sizes=(3, 5)))
    sites = mona_sites(model, build_tiny_pixel_values(batch=2))
    assert sites == [MonaSite(2 * 17, 2 * 16, 32, 4, 5)] * 4  # 4x4 patches + CLS, two blocks, two sites


def test_sites_refuse_a_model_without_mona():
    with pytest.raises(ValueError, match="no Mona layers"):
        mona_sites(build_tiny_swin(), build_tiny_pixel_values())


def test_floor_arithmetic_by_hand():
    site = MonaSite(tokens=10, grid_tokens=9, channels=6, inner_dim=4, kernel_size=3)
    assert site.multiply_adds() == 10 * (6 * 4 + 4 * 4 + 4 * 6) + 9 * 4 * 9
    assert site.floor_bytes(training=False) == 4 * (3 * 60 + 2 * 36)
    assert site.floor_bytes(training=True) == 4 * (7 * 60 + 7 * 36)
    rates = {"gemm_peak_flops_per_s": 1e6, "gemm_mona_shapes_flops_per_s": 5e5, "bandwidth_bytes_per_s": 1e4}
    sites = [site, dataclasses.replace(site, channels=12)]
    flops = sum(2 * s.multiply_adds() for s in sites)
    moved = sum(s.floor_bytes(False) for s in sites)
    assert floor_seconds(sites, rates, False, "gemm_peak_flops_per_s") == pytest.approx(flops / 1e6 + moved / 1e4)
    train = floor_seconds(sites, rates, True, "gemm_mona_shapes_flops_per_s")
    assert train == pytest.approx(3 * flops / 5e5 + sum(s.floor_bytes(True) for s in sites) / 1e4)

    report = mona_floor(sites, rates, bare_ms=100.0, lora_step_ms=200.0, full_step_ms=300.0)
    peak, skinny = report["floors"]["peak"], report["floors"]["mona_shapes"]
    assert peak["infer_latency_ratio_vs_base"] == pytest.approx(1 + peak["added_infer_ms"] / 100)
    assert skinny["train_step_ratio_vs_lora"] == pytest.approx(1 + skinny["added_train_step_ms"] / 200)
    assert skinny["train_step_ratio_vs_full"] == pytest.approx((200 + skinny["added_train_step_ms"]) / 300)
    assert skinny["added_train_step_ms"] > peak["added_train_step_ms"]  # slower GEMMs, higher floor


def test_measured_rates_are_rates():
    sites = [MonaSite(64, 64, 16, 8, 7)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = measure_rates(sites, repeats=2, square=64)
    finally:
        torch.set_num_threads(threads)
    assert set(rates) == {"gemm_peak_flops_per_s", "gemm_mona_shapes_flops_per_s", "bandwidth_bytes_per_s"}
    assert all(1e6 < value < 1e15 for value in rates.values())
