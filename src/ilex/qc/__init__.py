"""Quality control of a registration: Jacobian determinant, folding, similarity, and the reports
people look at (a page per registration, a page per study)."""

from .html_report import rebuild_pair_report as rebuild_pair_report
from .report import QualityReport as QualityReport
from .report import quality_report as quality_report
from .report import write_qc as write_qc
from .study_report import outliers as outliers
from .study_report import read_rounds as read_rounds
from .study_report import write_study_report as write_study_report
