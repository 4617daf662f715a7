"""A user's own Datasets of (image, label), as a user would write them, built from scikit-learn's digits."""

import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset


class Digits(Dataset):
    """`count` 8 x 8 digits from `start`: uint8 tensors by default, or float in [0, 1], or PIL images."""

    def __init__(self, start: int, count: int, form: str = "uint8"):
        digits = load_digits()
        self.images = torch.from_numpy(digits.images[start : start + count] * (255 / 16)).round().to(torch.uint8)
        self.labels = digits.target[start : start + count]
        self.form = form

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image, label = self.images[index], int(self.labels[index])
        if self.form == "float":
            return image.unsqueeze(0).float() / 255, label
        if self.form == "pil":
            return Image.fromarray(image.numpy()), label
        if self.form == "flat":
            return image, label  # (8, 8): no channel dimension
        if self.form == "float-label":
            return image.unsqueeze(0), float(label)
        return image.unsqueeze(0), label


def load(form: str = "uint8"):
    return Digits(0, 400, form), Digits(1500, 200, form)


def load_float():
    return load("float")


def load_pil():
    return load("pil")


def load_flat():
    return load("flat")


def load_float_labels():
    return load("float-label")


def load_one():
    return Digits(0, 10)
