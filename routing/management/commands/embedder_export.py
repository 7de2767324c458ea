from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from routing.cache.onnx_export import onnx_model_export
from routing.cache.onnx_model import PRECISIONS, onnx_model_path


class Command(BaseCommand):
    help = (
        "Export the semantic cache's model (all-MiniLM-L6-v2) to ONNX, fp32 and int8, into LLMOPS_CACHE_EMBEDDER_DIR. "
        "Does nothing when the files are there, unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("--folder", type=Path, help="where to write (default: LLMOPS_CACHE_EMBEDDER_DIR)")
        parser.add_argument("--force", action="store_true", help="export again over existing files")

    def handle(self, *args, folder, force, **options):
        folder = folder or Path(settings.LLMOPS_CACHE_EMBEDDER_DIR)
        paths = [onnx_model_path(folder=folder, precision=precision) for precision in PRECISIONS]
        if not force and all(path.exists() for path in paths):
            self.stdout.write(f"embedder model already exported: {', '.join(map(str, paths))}")
            return
        exported = onnx_model_export(folder=folder)
        for precision, path in exported.items():
            self.stdout.write(f"exported {precision}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
