"""Partitions carry the comparison: backbones (static), backbone x algorithm (multi), counties (dynamic)."""


from dagster import (
    DynamicPartitionsDefinition,
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

# A classifier partition reads the features of its backbone.
by_backbone = MultiToSingleDimensionPartitionMapping(partition_dimension_name="backbone")
