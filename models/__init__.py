"""Image classifiers for the unlearning runner.

Conventions shared by every model here:

* inputs are float images in [0, 1] of shape (B, C, H, W); the first layer is
  :class:`models.layers.Normalize`, so attacks work on raw pixels;
* constructors take the keyword-only arguments ``num_classes``,
  ``in_channels``, ``image_size``, ``mean`` and ``std`` (no defaults) plus
  architecture options with defaults, so configs can build them with
  ``_target_: models.resnet.ResNet18`` etc.;
* the final linear layer is the attribute ``fc`` and ``model.features(x)``
  returns its input (the penultimate representation).
"""

from models.airbench import AirbenchNet
from models.layers import Normalize
from models.resnet import ResNet18
from models.small import SmallCNN
from models.vgg import VGG19BN

__all__ = ["AirbenchNet", "Normalize", "ResNet18", "SmallCNN", "VGG19BN"]
