"""The TrainingRun operator: TrainingRun custom resources reconciled into GPU Jobs."""
