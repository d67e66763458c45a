"""Quality control of a registration: Jacobian determinant, folding, and a checkerboard PNG."""

from .report import QualityReport as QualityReport
from .report import quality_report as quality_report
from .report import write_qc as write_qc
