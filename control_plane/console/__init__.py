"""The operator's commands beyond run/status: doctor, errors, requeue."""
