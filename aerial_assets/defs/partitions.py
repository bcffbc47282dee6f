"""Partitions carry the comparison: backbones (static), backbone x algorithm (multi), counties (dynamic)."""


from dagster import (
    AllPartitionMapping,
    DynamicPartitionsDefinition,
    IdentityPartitionMapping,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
)

from aerial_assets.backbones.zoo import zoo_names
from aerial_assets.training.classifiers import ALGORITHMS

backbone_partitions = StaticPartitionsDefinition(zoo_names())
algorithm_partitions = StaticPartitionsDefinition(list(ALGORITHMS))
classifier_partitions = MultiPartitionsDefinition({"backbone": backbone_partitions, "algorithm": algorithm_partitions})
county_partitions = DynamicPartitionsDefinition(name="counties")

# How a partition reads another asset's partitions (every read is declared with one of these, so that Dagster's
# lineage, staleness and "materialize upstream" see it).
by_backbone = MultiToSingleDimensionPartitionMapping(partition_dimension_name="backbone")  # classifier -> its features
same_partition = IdentityPartitionMapping()  # the same backbone, classifier or county
every_partition = AllPartitionMapping()  # an unpartitioned asset (or scoring) that reads any partition
