"""Gradio web UI (`skymoe demo-ui`): upload an image (GeoTIFF too), pick a task or ask a question, see the answer,
the boxes drawn on the image and the expert weights the router chose."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from skymoe.data.schema import Task
from skymoe.errors import DataError

TASK_CHOICES = [
    ("Ask a question", Task.VQA.value),
    ("Caption", Task.CAPTION.value),
    ("Classify scene", Task.CLASSIFICATION.value),
    ("Find (grounding)", Task.GROUNDING.value),
    ("Count", Task.COUNTING.value),
]
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
MAX_UPLOAD_PIXELS = 8192 * 8192  # larger scenes belong to `skymoe scene`


def expert_table(answer) -> pd.DataFrame:
    """Long table (layer, expert, weight) of the router's mean gate weights; empty for a dense model."""
    rows = []
    if answer.routing is not None:
        for layer, weights in enumerate(answer.routing.expert_weights):
            name = "expert LLMs" if answer.routing.level == "llm" else f"MoE layer {layer}"
            rows += [{"layer": name, "expert": f"E{e}", "weight": round(w, 4)} for e, w in enumerate(weights)]
    return pd.DataFrame(rows, columns=["layer", "expert", "weight"])


def respond(pipeline, file_path: str | None, task: str, prompt: str):
    """(answer text, (image, boxes) for the overlay, expert-weight table, routing summary) for one request."""
    if not file_path:
        raise gr.Error("Upload an image first (PNG, JPEG or GeoTIFF).")
    try:
        image = pipeline.load(file_path, max_pixels=MAX_UPLOAD_PIXELS)
        answer = pipeline.run(image, task, prompt, routing=True)
    except DataError as exc:
        raise gr.Error(f"Cannot use this file: {exc}") from None
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    label = prompt.strip() if task == Task.GROUNDING.value and prompt else "box"
    boxes = [(tuple(round(v) for v in b.as_tuple()), label) for b in answer.boxes]
    summary = "dense model (no router)" if answer.routing is None else f"router: {answer.routing.describe()}"
    return answer.text, (image, boxes), expert_table(answer), summary


def build_web_ui(pipeline) -> gr.Blocks:
    with gr.Blocks(title="SkyMoE demo") as demo:
        gr.Markdown("# SkyMoE\nUpload a remote-sensing image, choose a task or ask a question.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image (PNG, JPEG, GeoTIFF)", file_types=UPLOAD_TYPES, type="filepath", elem_id="upload")
                task = gr.Radio(TASK_CHOICES, value=Task.VQA.value, label="Task", elem_id="task")
                prompt = gr.Textbox(label="Question / what to find or count", elem_id="prompt")
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                overlay = gr.AnnotatedImage(label="Boxes", elem_id="overlay")
                routing = gr.Textbox(label="Routing", interactive=False, elem_id="routing")
                experts = gr.BarPlot(x="expert", y="weight", color="layer", label="Expert weights", elem_id="experts")
        run.click(lambda f, t, p: respond(pipeline, f, t, p), [upload, task, prompt], [answer, overlay, experts, routing])
        prompt.submit(lambda f, t, p: respond(pipeline, f, t, p), [upload, task, prompt], [answer, overlay, experts, routing])
    return demo
