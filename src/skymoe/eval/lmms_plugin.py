"""SkyMoE as an lmms-eval model (``lmms-eval --model skymoe --model_args pretrained=DIR``).

lmms-eval finds it through the entry point group ``lmms_eval.models``
(``skymoe = "skymoe.eval.lmms_plugin:MANIFEST"`` in pyproject.toml), which must
resolve to a ``ModelManifest`` (lmms_eval/models/registry_v2.py). This module
imports lmms_eval, so only lmms-eval imports it.
"""
from __future__ import annotations

import os

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm.auto import tqdm

from skymoe.data.schema import Sample, Turn

MANIFEST = ModelManifest(model_id="skymoe", simple_class_path="skymoe.eval.lmms_plugin.SkyMoE")


def _first_image(visuals):
    """lmms-eval gives a list (possibly nested) of visuals; SkyMoE reads one image per prompt."""
    while isinstance(visuals, (list, tuple)):
        if not visuals:
            raise ValueError("the task gave no image for this document")
        visuals = visuals[0]
    return visuals


def _cut_at_stop_strings(text: str, until) -> str:
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop:
            text = text.split(stop)[0]
    return text.strip()


class SkyMoE(lmms):
    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str = 4, max_new_tokens: int | str = 32, **kwargs) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from skymoe.model.generation import load_model

        self.model, self.processor = load_model(pretrained)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    def _doc(self, task: str, split: str, doc_id):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from skymoe.data.imagery import load_image
        from skymoe.model.generation import greedy_generate

        answers: list[str] = []
        args = [r.args for r in requests]
        for start in tqdm(range(0, len(args), self.batch_size_per_gpu), desc="skymoe", disable=self.rank != 0):
            chunk = args[start : start + self.batch_size_per_gpu]
            images = [load_image(_first_image(to_visual(self._doc(task, split, doc_id)))) for _, _, to_visual, doc_id, task, split in chunk]
            inputs = self.processor.prepare_generation(images, [context for context, *_ in chunk])
            # one batch shares its generation settings; lmms-eval batches requests of one task
            gen_kwargs = chunk[0][1] or {}
            texts = greedy_generate(self.model, self.processor, inputs, int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)))
            answers += [_cut_at_stop_strings(text, (c[1] or {}).get("until")) for text, c in zip(texts, chunk)]
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of the continuation after the prompt, and whether greedy decoding gives it."""
        import torch

        from skymoe.data.imagery import load_image

        results = []
        for context, to_target, to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self._doc(task, split, doc_id)
            continuation = to_target if isinstance(to_target, str) else to_target(doc)
            sample = Sample(id=str(doc_id), image="lmms-eval", task="vqa", granularity="image",
                            conversation=[Turn("user", context), Turn("assistant", str(continuation))])
            batch = self.processor.collate([sample], [load_image(_first_image(to_visual(doc)))])
            labels = batch.pop("labels")
            for key in ("task_labels", "granularity_labels"):  # the router must infer them, as at test time
                batch.pop(key, None)
            with torch.no_grad():
                logits = self.model(**batch).logits[0, :-1].float()
            targets = labels[0, 1:]
            answer = (targets != -100).nonzero().squeeze(1)[:-1]  # the continuation without its </s>
            logprobs = torch.log_softmax(logits[answer], dim=-1)
            picked = targets[answer]
            results.append((float(logprobs.gather(1, picked[:, None]).sum()), bool((logprobs.argmax(-1) == picked).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("SkyMoE's lmms-eval adapter answers single-round tasks (generate_until, loglikelihood)")
