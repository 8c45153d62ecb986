"""``phy synth``: write a synthetic raw recording (.dat/.prb/.prm) with ground truth."""

from __future__ import annotations

import argparse

from phy_core.descriptors import Command, Services


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="output folder (created if needed)")
    parser.add_argument("--name", default="synthetic", help="file stem (default: synthetic)")
    parser.add_argument("--probe", default="linear32",
                        help="built-in probe name or .prb/.json path (default: linear32)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="duration in seconds (default 10)")
    parser.add_argument("--n-units", type=int, default=None,
                        help="true units (default: max(8, n_channels // 6))")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--sample-rate", type=float, default=30000.0,
                        help="sampling rate in Hz (default 30000)")
    parser.add_argument("--noise-std", type=float, default=10.0,
                        help="noise standard deviation in uV in the spike band (default 10)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_core.progress import ProgressReporter, show_progress

    from .recording import synthesize_recording

    reporter = ProgressReporter()
    stem = args.name.replace("{", "{{").replace("}", "}}")
    reporter.set_progress_message(f"writing {stem}.dat ({{progress:.0f}}%)")
    reporter.set_complete_message("Done.")
    with show_progress(reporter):
        result = synthesize_recording(
            args.out_dir, name=args.name, probe=args.probe, duration_s=args.duration,
            n_units=args.n_units, sample_rate=args.sample_rate, seed=args.seed,
            noise_std_uv=args.noise_std, reporter=reporter, overwrite=args.overwrite)
    snr = result.unit_snr
    print(f"{result.n_channels} channels, {result.duration_s:g} s at {result.sample_rate:g} Hz, "
          f"{result.n_units} units, {result.n_spikes} spikes "
          f"({result.elapsed_s:.1f} s, {result.duration_s / result.elapsed_s:.1f}x real time)")
    if len(snr):
        print(f"unit SNR (spike-band noise {result.noise_std_uv.mean():.3g} uV): "
              f"min {snr.min():.1f}, median {float(sorted(snr)[len(snr) // 2]):.1f}, "
              f"max {snr.max():.1f}; {int((snr < 5).sum())} units below 5")
    if result.n_clipped:
        print(f"warning: {result.n_clipped} samples clipped to the int16 range")
    for key in ("dat_path", "prb_path", "prm_path", "groundtruth_path"):
        print(f"  {result[key]}")
    return 0


synth_command = Command(
    name="synth",
    help="write a synthetic raw recording (.dat, .prb, .prm) with ground truth (.npz)",
    run=_run,
    add_arguments=_add_arguments,
)
