"""ArrayDataset batching and augmentation; the embedded digits; seeded streams."""

from __future__ import annotations

import numpy as np
import torch

from fedprune.data.base import ArrayDataset
from fedprune.seeding import numpy_generator, torch_generator


def images(n=6, c=3, h=5, w=5):
    return np.arange(n * c * h * w, dtype=np.uint8).reshape(n, c, h, w)


def test_batch_normalises_uint8_and_gathers_by_index():
    data = ArrayDataset(images(), np.arange(6), mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = data.batch(np.array([4, 1]))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 5, 5)
    assert y.tolist() == [1, 4]  # gathered in sorted order (sequential reads on a memory map)
    expected = (torch.from_numpy(images()[1]).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[0], expected)


def test_augmentation_is_a_padded_crop_and_flip_and_is_seeded():
    raw = images(n=8)
    data = ArrayDataset(raw, np.zeros(8), mean=(0.0,) * 3, std=(1 / 255,) * 3, augment_pad=2,
                        flip=True)
    a, _ = data.batch(np.arange(8), train=True, generator=torch.Generator().manual_seed(3))
    b, _ = data.batch(np.arange(8), train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    plain, _ = data.batch(np.arange(8))  # no augmentation outside training
    assert torch.allclose(plain, torch.from_numpy(raw).float(), atol=1e-3)
    for i in range(8):
        padded = torch.nn.functional.pad(torch.from_numpy(raw[i]).float(), (2, 2, 2, 2))
        crops = [padded[:, r : r + 5, s : s + 5] for r in range(5) for s in range(5)]
        assert any(torch.allclose(a[i], c, atol=1e-3) or torch.allclose(a[i], c.flip(-1), atol=1e-3)
                   for c in crops)


def test_digits_are_the_real_bundled_images(digits):
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert set(np.unique(digits.test.targets)) == set(range(10))


def test_seeded_streams_are_independent_and_repeatable():
    a = torch.rand(3, generator=torch_generator(0, "x", 1))
    assert torch.equal(a, torch.rand(3, generator=torch_generator(0, "x", 1)))
    assert not torch.equal(a, torch.rand(3, generator=torch_generator(0, "x", 2)))
    assert not torch.equal(a, torch.rand(3, generator=torch_generator(1, "x", 1)))
    assert numpy_generator(0, "p").integers(1 << 30) == numpy_generator(0, "p").integers(1 << 30)
