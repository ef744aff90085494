"""A test runner for Django's suite that writes each test's outcome to ``DJ_RESULTS`` (JSON:
test id -> pass, fail, error, skip, xfail or xpass, and the end of each failure's traceback), so
the two backends' runs can be compared test by test. A test with a failed subtest is not a
pass; the subtest is listed as failed."""

import json
import os
import unittest

from django.test.runner import DiscoverRunner


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}
        self.tracebacks = {}

    def _failed(self, test, err, outcome):
        self.outcomes[test.id()] = outcome
        self.tracebacks[test.id()] = self._exc_info_to_string(err, test)[-2000:]

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes[test.id()] = "pass"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._failed(test, err, "fail")

    def addError(self, test, err):
        super().addError(test, err)
        self._failed(test, err, "error")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes[test.id()] = "skip"

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.outcomes[test.id()] = "xfail"

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.outcomes[test.id()] = "xpass"

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._failed(subtest, err, "fail" if issubclass(err[0], test.failureException) else "error")


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self):
        return RecordingResult

    def run_suite(self, suite, **kwargs):
        result = super().run_suite(suite, **kwargs)
        with open(os.environ["DJ_RESULTS"], "w") as out:
            json.dump({"tests_run": result.testsRun, "outcomes": result.outcomes, "tracebacks": result.tracebacks}, out)
        return result
