import numpy as np
import torch
from sklearn import metrics as skm

from studylib.train.metrics import classification_report, images_digest, topk_accuracy


def test_known_example_by_hand():
    # 3 classes, 6 samples; predictions: argmax of these logits
    logits = torch.tensor([[3., 1, 0], [0, 2, 1], [0, 1, 3], [2, 1, 0], [1, 0, 3], [0, 3, 1]])
    labels = torch.tensor([0, 1, 2, 1, 2, 2])
    r = classification_report(logits, labels, ["a", "b", "c"])
    # predicted: 0 1 2 0 2 1 -> 4 of 6 right
    assert r["top1"] == 4 / 6
    # recall per class: a 1/1, b 1/2, c 2/3 -> balanced = mean
    assert np.isclose(r["balanced_accuracy"], (1 + 0.5 + 2 / 3) / 3)
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    pc = {row["class"]: row for row in r["per_class"]}
    assert np.isclose(pc["a"]["precision"], 0.5) and pc["c"]["support"] == 3
    # top-2: sample 3 (label 1) has 1 in its top-2; sample 5 (label 2) has 2 in its top-2
    assert topk_accuracy(logits, labels, 2) == 1.0
    assert r["top5"] == 1.0  # k is capped at the number of classes


def test_matches_scikit_learn_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    r = classification_report(logits, labels, [str(i) for i in range(7)])
    pred = logits.argmax(1).numpy()
    assert np.isclose(r["top1"], skm.accuracy_score(labels, pred))
    assert np.isclose(r["balanced_accuracy"], skm.balanced_accuracy_score(labels, pred))
    assert np.isclose(r["macro_f1"], skm.f1_score(labels, pred, average="macro"))
    assert np.isclose(r["top5"], skm.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=range(7)))


def test_per_class_and_confusion_match_scikit_learn_with_absent_classes():
    # 6 classes, but class 5 never appears and class 4 is never predicted: the zero_division cases
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (300,), generator=g)
    logits = torch.randn(300, 6, generator=g)
    logits[:, 4] -= 100
    r = classification_report(logits, labels, [str(i) for i in range(6)])
    pred = logits.argmax(1).numpy()
    idx = list(range(6))
    p, rec, f, s = skm.precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    assert np.allclose([c["precision"] for c in r["per_class"]], p)
    assert np.allclose([c["recall"] for c in r["per_class"]], rec)
    assert np.allclose([c["f1"] for c in r["per_class"]], f)
    assert [c["support"] for c in r["per_class"]] == s.tolist()
    assert r["confusion_matrix"] == skm.confusion_matrix(labels, pred, labels=idx).tolist()
    assert np.isclose(r["macro_f1"], skm.f1_score(labels, pred, labels=idx, average="macro", zero_division=0))
    assert np.isclose(r["balanced_accuracy"], skm.balanced_accuracy_score(labels, pred))


def test_report_keeps_each_images_prediction_and_label_in_order():
    logits = torch.tensor([[3., 1, 0], [0, 2, 1], [0, 1, 3], [2, 1, 0], [1, 0, 3], [0, 3, 1]])
    labels = torch.tensor([0, 1, 2, 1, 2, 2])
    r = classification_report(logits, labels, ["a", "b", "c"])
    assert r["predictions"] == [0, 1, 2, 0, 2, 1]
    assert r["labels"] == [0, 1, 2, 1, 2, 2]
    assert np.mean(np.array(r["predictions"]) == np.array(r["labels"])) == r["top1"]


def test_images_digest_names_the_images_their_labels_and_order():
    names, labels = ["test/a/1.jpg", "test/b/2.jpg"], [0, 1]
    digest = images_digest(names, labels)
    assert digest == images_digest(list(names), list(labels))     # the same split, the same digest
    assert digest != images_digest(names[::-1], labels[::-1])     # another order
    assert digest != images_digest(names, [1, 0])                 # other labels
    assert digest != images_digest(["test/a/1.jpg"], [0])         # fewer images
