"""ACGAN (Odena, Olah, Shlens 2017) for the three-class task normal / bacteria / virus.

- :mod:`pneumo.gan.acgan`: generator and spectrally normalised two-head discriminator;
- :mod:`pneumo.gan.train`: training (``pneumo gan train``), checkpoints, resume, sample grids;
- :mod:`pneumo.gan.classifier`: the discriminator's class head exported as a pneumo classifier run;
- :mod:`pneumo.gan.synth`: sampling, grids and synthetic *training-only* images (``pneumo gan sample|synth``);
- :mod:`pneumo.gan.fid`: Frechet distance / KID on pneumo-classifier features (not Inception FID) and class agreement;
  :mod:`pneumo.gan.quality` scores a GAN run with a classifier run (``pneumo gan quality``).
"""

from pneumo.gan.acgan import Discriminator, Generator
from pneumo.gan.checkpoint import load_generator
from pneumo.gan.config import GanConfig, load_config
from pneumo.gan.fid import class_agreement, extract_features, frechet_distance, kid
from pneumo.gan.quality import sample_quality
from pneumo.gan.synth import generate, sample_to_file, synthetic_records, write_synthetic_dataset
from pneumo.gan.train import resume_gan, train_gan

__all__ = [
    "Discriminator",
    "GanConfig",
    "Generator",
    "class_agreement",
    "extract_features",
    "frechet_distance",
    "generate",
    "kid",
    "load_config",
    "load_generator",
    "resume_gan",
    "sample_quality",
    "sample_to_file",
    "synthetic_records",
    "train_gan",
    "write_synthetic_dataset",
]
