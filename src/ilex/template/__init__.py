"""Study-specific templates: groupwise registration in rounds on `ilex batch`'s runner (`ilex template`)."""

from .build import build_template as build_template
from .inputs import TemplateInput as TemplateInput
from .inputs import read_image_list as read_image_list
from .result import TemplateImage as TemplateImage
from .result import TemplateResult as TemplateResult
from .settings import TemplateSettings as TemplateSettings
