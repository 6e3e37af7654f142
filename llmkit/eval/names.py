"""Metric names accepted by `llmkit eval --metric` and the families they belong to."""

from __future__ import annotations

from llmkit.errors import UsageError, UserError, did_you_mean

TEXT = ("bleu", "chrf", "chrf++", "rouge", "rouge1", "rouge2", "rougeL", "rougeLsum")
LM = ("perplexity", "word_perplexity", "byte_perplexity", "bpb")
CLASSIFICATION = ("accuracy", "accuracy_norm", "precision", "recall", "f1")
ALL = TEXT + LM + CLASSIFICATION
NORM_NEEDS_CHOICES = ("accuracy_norm scores multiple-choice records ('choices': each answer's log-likelihood per "
                      "character); for labels use --metric accuracy")


def parse_metrics(values: list[str]) -> list[str]:
    """`--metric bleu --metric rouge` or `--metric bleu,rouge`, in one order whatever the order typed
    (ALL's: a set of metrics, recorded in the config, is one artifact), duplicates dropped."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part not in ALL:
                raise UsageError(f"unknown metric {part!r}; {did_you_mean(part, ALL)}choose from: {', '.join(ALL)}")
            name = part
            if name not in names:
                names.append(name)
    if not names:
        raise UserError(f"no metric given; pass --metric NAME (one of: {', '.join(ALL)})")
    return sorted(names, key=ALL.index)


def family(names: list[str], members: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in members]


class NotFinite(UserError):
    """Scores that are not finite (NaN or infinity), raised where they come out; `run_eval`, which
    holds the loaded model, words it (`explained`), naming the weight and the checkpoint to blame:
    `verify` passes such a checkpoint, its files being as written."""

    def __init__(self, what: str = ""):
        super().__init__(what or "a score is not finite")
        self.what = what

    def explained(self, loaded) -> str:
        lead = f"{self.what}: " if self.what else ""
        if loaded is None:
            return f"{lead}a score came out as NaN or infinity"
        import torch

        # an ensemble's modules are its members of weight above 0, in loaded.members' order (load_ensemble)
        kept = [art for art, weight in zip(loaded.members, loaded.member_weights) if weight > 0] or [loaded.artifact]
        modules = list(loaded.model.members) if len(kept) > 1 else [loaded.model]
        largest = 0.0
        for art, module in zip(kept, modules):
            for name, weight in module.named_parameters():
                if not weight.is_floating_point() or weight.numel() == 0:
                    continue
                if not bool(torch.isfinite(weight.detach()).all()):
                    whose = f"{art.path}'s weight" if len(kept) > 1 else "its weight"
                    return (f"{lead}the model's outputs are not finite (NaN or infinity): {whose} {name} holds NaN or "
                            "inf; use another checkpoint")
                largest = max(largest, float(weight.detach().abs().max()))
        return (f"{lead}the model's outputs are not finite (NaN or infinity), its weights being finite (the largest "
                f"{largest:.3g}): they overflow; use another checkpoint")
