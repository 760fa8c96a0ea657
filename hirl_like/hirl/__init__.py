"""HIRL (Xu et al. 2022, hierarchical image representation learning): the clustering half.

:func:`hierarchical_kmeans` builds the semantic hierarchy (image -> level-1 centroid -> ... ->
level-L centroid) that :class:`hirl_like.losses.semantic_path.SemanticPathLoss` trains against.
"""

from hirl_like.hirl.hierarchical_kmeans import HierarchicalClusters, hierarchical_kmeans

__all__ = ["HierarchicalClusters", "hierarchical_kmeans"]
