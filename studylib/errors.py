"""The study's error types. Each message is one sentence: what, the bad value, what is allowed."""


class StudyError(Exception):
    """Base class for errors a user can act on."""


class ParameterError(StudyError, ValueError):
    def __init__(self, parameter: str, value, allowed: str):
        self.parameter, self.value, self.allowed = parameter, value, allowed
        super().__init__(f"parameter '{parameter}' is {value!r}, but it must be {allowed}.")


class DatasetUnavailable(StudyError, FileNotFoundError):
    """A dataset is not on disk and could not be downloaded."""


class PretrainedWeightsUnavailable(StudyError, FileNotFoundError):
    """Pretrained weights are not in the library's cache and could not be downloaded."""
