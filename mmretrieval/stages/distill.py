"""Stage ``distill``: a student dual encoder learns the re-ranker's ranking of hard negatives.

The teacher is the cross-attention re-ranker of the challenger version (trained by the ``rerank`` stage; it must
have passed its gate). The student starts from that version's dual encoder and fine-tunes its heads on the train
split with the usual symmetric InfoNCE plus ``distill.kl_weight`` x KL(teacher || student) between the two score
distributions over each caption's candidate list (its image and the dual encoder's hard negatives), at
``distill.temperature`` (:func:`~mmretrieval.training.rerank.distill_kl`). It costs nothing at query time: the
student is a dual encoder like any other. It is registered as a new version with the ``challenger`` alias; run
``mmr evaluate`` and ``mmr promote`` to put it through the same gate as every model.

A teacher over concept regions (``rerank.concepts``, with a dual encoder in the text model's own space) teaches a
*concept student* instead (:func:`concept_student`): the dual encoder plus its image's whole-picture concept vector
(the ImageNet class distribution over the class names' text embeddings) mixed into the image vector with one
learned weight, which is fitted to the teacher's list distributions (listwise cross-entropy + KL) on image vectors
from cross-fitted heads (:func:`~mmretrieval.training.rerank.train_concept_mix`). A head fine-tuned on the same
photos cannot learn the teacher's ranking: it has memorised them (docs/benchmarks.md).

With ``rerank.queries: item`` (audio of spoken digits: ten distinct captions), the lists are the items': each
training clip ranks its caption against the dual encoder's hard-negative captions, and the student's item head
learns listwise cross-entropy plus the KL term over them (:func:`~mmretrieval.training.rerank.train_item_student`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.core.errors import ModelError
from mmretrieval.core.layout import read_clean
from mmretrieval.core.schema import Modality, Split
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.serving import loading, pyfunc

log = logging.getLogger(__name__)


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    import torch

    from mmretrieval.models.dual_encoder import RetrievalModel, load
    from mmretrieval.serving.reranking import serving_reranker
    from mmretrieval.training.rerank import (
        DistillData,
        RerankData,
        RerankSchedule,
        out_of_fold_vectors,
        pair_lists,
        teacher_logits,
        train_concept_mix,
        train_item_student,
        train_student,
    )
    from mmretrieval.training.rerank_inputs import split_inputs, training_scores

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    p, d = params.rerank, params.distill
    started = time.monotonic()
    ref = tracking.require_alias(settings, dataset, tracking.CHALLENGER)
    teacher = serving_reranker(settings, ref)
    if teacher is None:
        from mmretrieval.serving.reranking import why_unavailable

        raise ModelError(f"no re-ranker that passed its gate to distil from: {why_unavailable(settings, dataset, ref)}")
    model = loading.load_model(settings, ref, "cpu")
    source = read_clean(settings.layout(dataset))
    clean, clean_dir = source.frame, source.root
    modality = teacher.config.modality
    es, maps, tokens, mask, text_vecs, item_vecs = split_inputs(model, clean, clean_dir, Split.TRAIN.value, modality,
                                                                params.index)
    dual = training_scores(model, es, maps, text_vecs, item_vecs, p)  # the lists the teacher learnt on
    items_ask = p.queries == "item"  # each item ranks captions (few distinct captions: spoken digits)
    texts, items = pair_lists(es.relevant, dual, p.negatives, "item" if items_ask else "text",
                              np.random.default_rng(d.seed))[0]
    teach = teacher_logits(teacher, RerankData(tokens, mask, maps, es.relevant, dual), texts, items)
    sentences, pooled = model.text.encode(es.captions), maps.float().mean(dim=(3, 4))
    owner = torch.from_numpy(es.relevant.argmax(axis=1))
    schedule = RerankSchedule(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, seed=d.seed)
    t_train = time.monotonic()
    if teacher.config.concepts and model.config.text_head == "none":
        student = concept_student(settings, ref, teacher)
        vectors, _ = out_of_fold_vectors(pooled, sentences, owner, p.folds, seed=p.seed)  # as the teacher's lists
        losses = train_concept_mix(student, torch.from_numpy(vectors), pooled[0], sentences, torch.from_numpy(items),
                                   teach, d.kl_weight, d.temperature)
        losses = losses[-1:]  # full-batch steps: the last loss is the one to log
    elif items_ask:
        student = load(tracking.download(settings, ref)).net  # a fresh copy of the teacher's dual encoder
        project = student.project_audio if modality == Modality.AUDIO.value else student.project_image
        losses = train_item_student(student, project, pooled, sentences, torch.from_numpy(texts), teach, schedule,
                                    d.kl_weight, d.temperature)
    else:
        student = load(tracking.download(settings, ref)).net
        data = DistillData(sentences, pooled, owner, torch.from_numpy(items), teach)
        losses = train_student(student, data, schedule, d.kl_weight, d.temperature)
    train_seconds = time.monotonic() - t_train
    new, run_id = _register(settings, dataset, ref, RetrievalModel(student, model.text, "cpu"), source.data_version,
                            losses, train_seconds)
    log.info("distill %s: student v%s from the re-ranker of v%s in %.1fs", dataset, new.version, ref.version,
             train_seconds)
    mix = getattr(student, "concept_mix", None)
    return {"dataset": dataset, "teacher_version": ref.version, "model": new.name, "model_version": new.version,
            "concept_mix": None if mix is None else round(float(mix.detach()), 4),
            "run_id": run_id, "losses": [round(x, 4) for x in losses], "train_seconds": round(train_seconds, 1),
            "seconds": round(time.monotonic() - started, 1)}


def _register(settings: Settings, dataset: str, ref: tracking.ModelRef, student: Any, data_version: str,
              losses: list[float], train_seconds: float) -> tuple[tracking.ModelRef, str]:
    """Log the ``student`` (a RetrievalModel) in its own MLflow run with the distillation params and losses, register
    it as the dataset's new ``challenger`` tagged with the teacher's version. Returns the new version and run id."""
    d = settings.params_for(dataset).distill
    code_version = tracking.git_sha(Path(__file__).resolve().parents[1])
    tags = {"dataset": dataset, "data_version": data_version, "git_sha": code_version, "stage": "distill",
            "teacher_version": ref.version}
    with tracking.start_run(settings, dataset, run_name=f"distill-{dataset}", tags=tags) as mlrun:
        tracking.log_params({f"distill.{k}": v for k, v in d.__dict__.items()} | {"teacher": ref.uri})
        for epoch, loss in enumerate(losses, start=1):
            tracking.log_metrics({"loss": loss}, step=epoch)
        tracking.log_metrics({"train_seconds": train_seconds})
        pyfunc.log_model(student)
        run_id = mlrun.info.run_id
    new = tracking.register(settings, dataset, run_id)
    tracking.tag_version(settings, new, {"data_version": data_version, "git_sha": code_version,
                                         "distilled_from": ref.version})
    tracking.set_alias(settings, dataset, tracking.CHALLENGER, new.version)
    return new, run_id


def concept_student(settings: Settings, ref: tracking.ModelRef, teacher: Any) -> Any:
    """The teacher's dual encoder (version ``ref``) with ``image_concepts``: its heads as they are, plus the concept
    re-ranker's vocabulary (classifier and class-name embeddings) and a mixing weight starting at 0 (the student
    starts out ranking exactly like the teacher's dual encoder)."""
    import dataclasses

    from mmretrieval.models.dual_encoder import DualEncoder, load

    base = load(tracking.download(settings, ref))
    config = dataclasses.replace(base.net.config, image_concepts=teacher.config.concepts)
    student = DualEncoder(config, text=base.text)
    missing, unexpected = student.load_state_dict(base.net.state_dict(), strict=False)
    if unexpected or set(missing) - {"concept_weight", "concept_bias", "concept_text", "concept_mix"}:
        raise ModelError(f"{ref.uri} does not fit a concept student: missing {missing}, unexpected {unexpected}")
    student.set_concepts(teacher.concept_weight, teacher.concept_bias, teacher.concept_text)
    return student
