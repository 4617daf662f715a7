"""A user's script that parses its command line when imported: under lrlab it reads lrlab's arguments."""

import argparse

from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--hidden", type=int, default=16)
arguments = parser.parse_args()


def model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
