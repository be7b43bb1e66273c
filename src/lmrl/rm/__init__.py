"""Bradley-Terry reward models (`lmrl rm train`, `lmrl rm eval`): a one-output
sequence-classification head on a causal-LM backbone, trained on preference pairs.

    pairs.py  preference rows -> (prompt text, chosen text, rejected text, margin)
    loss.py   the Bradley-Terry loss and pairwise metrics: pure tensor functions
    model.py  loading a backbone or a saved reward model, and `score`
    train.py  the training loop, held-out evaluation and the saved output
"""
