"""The HL7 v2 trigger: order and scheduling messages over MLLP start prefetches."""
