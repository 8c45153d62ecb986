"""Template directories (Kilosort / phy 2 output): the reader and ``phy export-template``."""

from pathlib import Path

from phy_core import hookimpl


def _template_dir(path: Path) -> Path | None:
    """The directory if `path` is a template directory or its ``params.py``."""
    directory = path.parent if path.name == "params.py" else path
    if (directory / "params.py").is_file() and (directory / "spike_times.npy").is_file():
        return directory
    return None


@hookimpl(trylast=True)
def phy_open_model(path, options):
    directory = _template_dir(Path(path))
    if directory is None:
        return None
    from .model import TemplateModel

    return TemplateModel(directory)


def _add_export_arguments(parser):
    parser.add_argument("source", help="the dataset to export (any path phy can open)")
    parser.add_argument("out_dir", help="the template directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a template directory already in OUT_DIR")
    parser.add_argument("--max-spikes-per-template", type=int, default=100,
                        help="spikes averaged per template (default 100)")
    parser.add_argument("--channel-group", type=int, default=None, help="channel group (shank)")
    parser.add_argument("--clustering", default=None, help="clustering name (default: main)")


def _run_export(args, services):
    from phy_commands.commands import open_model
    from phy_core.progress import ProgressReporter, show_progress

    from .writer import write_template_directory

    model = open_model(services, args.source, channel_group=args.channel_group,
                       clustering=args.clustering)
    try:
        reporter = ProgressReporter()
        reporter.set_progress_message("Exporting: {progress:.0f}%")
        reporter.set_complete_message(f"Wrote {args.out_dir}.")
        with show_progress(reporter):
            write_template_directory(
                model, args.out_dir, overwrite=args.overwrite,
                max_spikes_per_template=args.max_spikes_per_template, reporter=reporter,
            )
    finally:
        model.close()
    return 0


@hookimpl(trylast=True)
def phy_commands():
    from phy_core.descriptors import Command

    return [Command(
        name="export-template",
        help="write any dataset as a template directory (Kilosort / phy 2 layout)",
        run=_run_export,
        add_arguments=_add_export_arguments,
    )]
