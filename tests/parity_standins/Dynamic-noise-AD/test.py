"""Stand-in following Dynamic-noise-AD test.py's KNN and get_bins_and_mappings (see ../README.md)."""
import numpy as np
from sklearn.neighbors import NearestNeighbors


class KNN:
    def __init__(self, config, k=5, num_bins=10):
        self.k, self.num_bins = k, num_bins
        self.model = NearestNeighbors(n_neighbors=k, metric=config.model.KNN_metric)

    def fit(self, X):
        X = X.detach().cpu().numpy()
        self.model.fit(X)
        mean_dist = self.model.kneighbors(X)[0].mean(axis=1)  # the point itself is one neighbour
        self.histogram, self.bin_edges = np.histogram(mean_dist, self.num_bins)

    def transform(self, X):
        return self.model.kneighbors(X)


def get_bins_and_mappings(knn, distances, indices):
    keys, mappings = [], []
    last = len(knn.bin_edges) - 2
    for d, idx in zip(distances, indices):
        b = min(int(np.searchsorted(knn.bin_edges, d.mean(), side="left")) - 1, last) + 1
        keys.append(b)
        mappings.append({b: list(idx)})
    return mappings, keys
