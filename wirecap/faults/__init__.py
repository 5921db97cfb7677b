"""Fault injection: parse ``--fault`` specs, pick the requests that get them, and make each
fault's bytes (provider-shaped error answers, transformed and synthesized bodies). Sans-IO: the
mock server (``wirecap serve``) and the proxy carry out what these modules decide."""

from wirecap.faults.answers import Answer, api_of, error_answer, synthesized_answer
from wirecap.faults.body import BodyFault, Cut, Pause, Send, Step
from wirecap.faults.plan import FaultPlan, request_model
from wirecap.faults.spec import KINDS, FaultSpec, FaultSpecError, parse_fault, parse_faults

__all__ = [
    "KINDS",
    "Answer",
    "BodyFault",
    "Cut",
    "FaultPlan",
    "FaultSpec",
    "FaultSpecError",
    "Pause",
    "Send",
    "Step",
    "api_of",
    "error_answer",
    "parse_fault",
    "parse_faults",
    "request_model",
    "synthesized_answer",
]
