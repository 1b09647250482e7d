"""Data: datasets (ImageFolder, CSV manifest), image decoding, splits, transforms, the P x K pair
sampler, in-batch pair selection and the embedded synthetic-cell generator."""
