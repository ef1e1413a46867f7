"""``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG) from metrics.

Both documents are rendered from the same list of sections (title + table), so
they always show the same numbers; every number comes from ``metrics.json``.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from skymoe.eval.records import Prediction

GALLERY_PER_DATASET = 4


@dataclass
class Section:
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    text: str = ""
    image: str | None = None  # PNG file name inside the report folder


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict) and "status" in value:
        return value.get("status") if "value" not in value else fmt(value["value"])
    return "—" if value is None else str(value)


def _baseline_value(metrics: dict, path: list[str]):
    node = metrics.get("baseline", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _is_reported_value(name: str, value) -> bool:
    """Scalar metrics and status records (SPICE) go into the per-dataset table; n, tables and lists do not."""
    if isinstance(value, dict):
        return "status" in value
    return isinstance(value, (int, float)) and not isinstance(value, bool) and name != "n"


def summary_sections(metrics: dict) -> list[Section]:
    model = metrics["model"]
    # the baseline is scored on the records that carry its answer: its n says when that is not all of them
    overall = Section("Overall (primary metric per task)", ["task", "scorer", "metric", "n", "model", "baseline", "baseline n"])
    for task, o in model["overall"].items():
        overall.rows.append([task, o["scorer"], o["metric"], o["n"], o["value"], _baseline_value(metrics, ["overall", task, "value"]),
                             _baseline_value(metrics, ["overall", task, "n"])])
    details = Section("Per dataset / split", ["dataset/split", "task", "metric", "model", "baseline"])
    for group, tasks in model["by_dataset"].items():
        for task, values in tasks.items():
            for name, value in values.items():
                if _is_reported_value(name, value):
                    details.rows.append([group, task, name, value, _baseline_value(metrics, ["by_dataset", group, task, name])])
    granularity = Section("Per granularity (primary metric)", ["granularity", "task", "n", "model"])
    for gran, tasks in model["by_granularity"].items():
        for task, values in tasks.items():
            granularity.rows.append([gran, task, values["n"], values[model["overall"][task]["metric"]]])
    qtypes = Section("Per question type", ["dataset/split", "task", "question type", "metric", "n", "model", "baseline"])
    for group, tasks in model["by_question_type"].items():
        for task, types in tasks.items():
            for qt, v in types.items():
                base = _baseline_value(metrics, ["by_question_type", group, task, qt, "value"])
                qtypes.rows.append([group, task, qt, v["metric"], v["n"], v["value"], base])
    qa = Section("Question answering (RSVQA overall / average accuracy over all question types)",
                 ["dataset/split", "n", "OA", "AA", "baseline OA", "baseline AA"])
    for group, m in model["question_answering"].items():
        base = _baseline_value(metrics, ["question_answering", group]) or {}
        qa.rows.append([group, m["n"], m["overall_accuracy"], m["average_accuracy"], base.get("overall_accuracy"), base.get("average_accuracy")])
    return [overall, qa, granularity, qtypes, details]


def routing_sections(metrics: dict, out_dir: Path) -> list[Section]:
    routing = metrics["routing"]
    if routing.get("status") != "ok":
        return [Section("Routing", text=f"Routing analysis unavailable: {routing.get('reason')}")]
    table = Section("Routing", ["what", "task", "granularity"])
    acc, spec = routing["router_accuracy"], routing["specialisation"]
    table.rows.append(["router accuracy (all samples)", acc["task"]["overall"], acc["granularity"]["overall"]])
    table.rows.append(["router accuracy (macro over classes)", acc["task"].get("macro"), acc["granularity"].get("macro")])
    table.rows.append(["specialisation I(C;E), bits (mean over layers)", spec["task"]["mean_bits"], spec["granularity"]["mean_bits"]])
    table.rows.append(["specialisation / H(C)", spec["task"]["normalized"], spec["granularity"]["normalized"]])
    if routing.get("level") == "llm":
        table.text = f"{routing['n']} routed samples; one choice per sample among {routing['num_experts']} expert LLMs."
    else:
        table.text = f"{routing['n']} routed samples, {routing['num_layers']} MoE layers x {routing['num_experts']} experts."
    from skymoe.eval.plots import routing_heatmap

    per_class = Section("Router accuracy per class", ["what", "class", "n", "accuracy"])
    for key in ("task", "granularity"):
        counts = acc[key].get("n_per_class", {})
        per_class.rows += [[key, name, counts.get(name), value] for name, value in acc[key]["per_class"].items()]
    heatmap = Section("Expert load by task and granularity", image="routing_heatmap.png")
    routing_heatmap(routing, out_dir / heatmap.image)
    return [table, per_class, heatmap]


def question_type_plot(metrics: dict, out_dir: Path) -> list[Section]:
    from skymoe.eval.plots import question_type_bars

    if not metrics["model"]["by_question_type"]:
        return []
    section = Section("Model vs baseline per question type", image="question_types.png")
    question_type_bars(metrics, out_dir / section.image)
    return [section]


def gallery(predictions: list[Prediction]) -> Section:
    section = Section("Examples", ["id", "dataset/split", "task", "question", "prediction", "reference", "baseline"])
    shown: dict[str, int] = {}
    for p in predictions:
        if shown.get(p.group, 0) < GALLERY_PER_DATASET:
            shown[p.group] = shown.get(p.group, 0) + 1
            section.rows.append([p.id, p.group, p.task, p.question, p.prediction, " | ".join(p.references), p.baseline])
    return section


REPORT_TITLE = "SkyMoE evaluation report"


def to_markdown(sections: list[Section], title: str = REPORT_TITLE) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        if s.image:
            lines += [f"![{s.title}]({s.image})", ""]
        if s.header:
            lines.append("| " + " | ".join(s.header) + " |")
            lines.append("|" + " --- |" * len(s.header))
            for row in s.rows:
                lines.append("| " + " | ".join(fmt(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
            lines.append("")
    return "\n".join(lines)


def to_html(sections: list[Section], out_dir: Path, title: str = REPORT_TITLE) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}img{max-width:100%}</style>"
        ),
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        if s.image:
            data = base64.b64encode((out_dir / s.image).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        if s.header:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in s.header) + "</tr>")
            for row in s.rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(metrics: dict, predictions: list[Prediction], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    sections = summary_sections(metrics) + question_type_plot(metrics, out_dir) + routing_sections(metrics, out_dir)
    sections.append(gallery(predictions))
    (out_dir / "report.md").write_text(to_markdown(sections) + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(sections, out_dir) + "\n", encoding="utf-8")
