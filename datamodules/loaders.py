"""Loaders shared by the dense-prediction datamodules (segmentation, depth)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info


class DenseDataModule(L.LightningDataModule):
    """Shuffled training batches; validation, test and prediction one image at a time, since sizes differ.

    Subclasses set ``batch_size`` and ``num_workers``, and ``train_set``, ``eval_set``, ``predict_set`` in ``setup``.
    """

    batch_size: int
    num_workers: int
    train_set: Dataset
    eval_set: Dataset
    predict_set: Dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, 1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, 1)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, 1)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker,
        )


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (each would otherwise copy the same albumentations RNG)."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)
