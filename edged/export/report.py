"""What int8 cost: detections of the int8 model scored against the float model's on images that
were not used for calibration (mAP@0.5, float detections taken as ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edged.core.metrics import average_precision
from edged.engine.detector import Detector, DetectParams
from edged.tools.images import Sample


@dataclass(frozen=True)
class QuantReport:
    images: int
    map50: float
    per_class: dict[str, float]
    float_detections: int  # at gt_conf
    int8_detections: int  # at gt_conf
    gt_conf: float
    pred_conf: float

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.images, "map50_vs_float": round(self.map50, 4),
            "float_detections": self.float_detections, "int8_detections": self.int8_detections,
            "float_conf": self.gt_conf, "int8_conf": self.pred_conf,
        }

    def lines(self) -> list[str]:
        out = [
            f"int8 vs float on {self.images} held-out images: mAP@0.5 = {self.map50:.4f} "
            f"(float detections at score >= {self.gt_conf} as ground truth; "
            f"{self.float_detections} float vs {self.int8_detections} int8 detections)",
        ]
        worst = sorted(self.per_class.items(), key=lambda kv: kv[1])[:5]
        if worst:
            out.append("  lowest per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in worst))
        return out


def int8_agreement(float_model: Detector, int8_model: Detector, samples: Sequence[Sample],
                   labels: Sequence[str], gt_conf: float = 0.25, pred_conf: float = 0.01,
                   iou_threshold: float = 0.45) -> QuantReport:
    gt_params = DetectParams(gt_conf, iou_threshold, 100)
    pred_params = DetectParams(pred_conf, iou_threshold, 100)
    gts, preds = [], []
    n_int8 = 0
    for s in samples:
        gts.append(float_model.detect(s.image, gt_params))
        p = int8_model.detect(s.image, pred_params)
        preds.append(p)
        n_int8 += int((p.scores >= gt_conf).sum())
    m, per_class = average_precision(gts, preds, 0.5)
    named = {labels[c] if c < len(labels) else str(c): ap for c, ap in per_class.items()}
    return QuantReport(len(samples), m, named, sum(len(g) for g in gts), n_int8, gt_conf,
                       pred_conf)
