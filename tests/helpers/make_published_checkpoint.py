"""Write a checkpoint the way the published train.py does: torch.save of the
whole MLPClassifier defined in __main__ (run as a script, like train.py)."""
import sys

import torch
import torch.nn.functional as F
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.output_layer(self.dropout(F.relu(self.bn1(self.hidden_layer(x)))))


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.save(MLPClassifier(3328, 512, 2).eval(), sys.argv[1])
