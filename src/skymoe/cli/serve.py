"""``skymoe serve`` (OpenAI-compatible HTTP API) and ``skymoe demo-ui`` (Gradio web demo)."""
from __future__ import annotations

import os

from skymoe.cli.options import non_negative_int, port_number, positive_float, positive_int
from skymoe.cli.predict import add_model_arguments, load_pipeline


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--api-key", default=os.environ.get("SKYMOE_API_KEY"), help="required bearer key (default: $SKYMOE_API_KEY; none = open)")
    serve.add_argument("--max-queue", type=non_negative_int, default=16, help="requests that may wait; beyond that: 429 (default: %(default)s)")
    serve.add_argument("--max-tokens", type=positive_int, default=256, help="largest max_tokens a request may ask for (default: %(default)s)")
    serve.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096, help="largest image, width x height; beyond: 413 (default: %(default)s)")
    serve.add_argument("--max-body-mb", type=positive_float, default=16.0, help="largest request body; beyond: 413 (default: %(default)s)")
    serve.set_defaults(func=run_serve)

    web_ui = subparsers.add_parser("demo-ui", help="Gradio web demo: upload an image, ask, see boxes and expert weights")
    add_model_arguments(web_ui)
    web_ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    web_ui.add_argument("--port", type=port_number, default=7860, help="port to listen on (default: %(default)s)")
    web_ui.set_defaults(func=run_web_ui)


def run_serve(args) -> int:
    import uvicorn

    from skymoe.serve.api import ServerLimits, create_app

    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
                          max_tokens=args.max_tokens, max_batch=args.batch_size, max_queue=args.max_queue)
    uvicorn.run(create_app(load_pipeline(args), api_key=args.api_key, limits=limits), host=args.host, port=args.port)
    return 0


def run_web_ui(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from skymoe.serve.ui import build_web_ui

    build_web_ui(load_pipeline(args)).launch(server_name=args.host, server_port=args.port)
    return 0
