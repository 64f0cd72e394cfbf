"""Models: encoders (CIFAR ResNets, torchvision ResNet-50/ResNeXt-50) wrapped into :class:`ResComModel`.

>>> model = create_model("resnet32", num_classes=100, proj_dim=32)
>>> out = model(torch.randn(8, 3, 32, 32))  # logits [8, 100], embedding [8, 32], features [8, 64]
"""

from rescom.models import resnet_cifar, resnet_tv  # noqa: F401  (register the architectures)
from rescom.models._registry import create_model, list_models, load_encoder_weights, register_model
from rescom.models.heads import LinearClassifier, ProjectionHead
from rescom.models.rescom_model import InferenceModel, ResComModel

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "load_encoder_weights",
    "ResComModel",
    "InferenceModel",
    "ProjectionHead",
    "LinearClassifier",
]
