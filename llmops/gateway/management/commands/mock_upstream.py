import uvicorn
from django.core.management.base import BaseCommand

from llmops.mock_upstream import MockUpstream


class Command(BaseCommand):
    help = "Run a local OpenAI-compatible mock upstream (for the demo, tests and benchmarks)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--latency-ms", type=float, default=0.0, help="Delay before each answer.")
        parser.add_argument("--require-key", default="", help="Answer 401 unless this bearer key is sent.")

    def handle(self, *args, host, port, latency_ms, require_key, **options):
        self.stdout.write(f"mock upstream on http://{host}:{port}/v1 (latency {latency_ms:g} ms)")
        app = MockUpstream(latency_ms=latency_ms, required_key=require_key)
        uvicorn.run(app, host=host, port=port, workers=1, log_level="warning", access_log=False)
