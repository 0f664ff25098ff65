# ppmlops compliance policy (CMFM: the compliance monitoring and filtering module).
#
# Three decisions. Each is an object and is defined for every input, so a caller that gets
# "undefined" back knows the policy itself is broken and refuses (fails closed):
#
#   data.ppmlops.budget  {"epsilon": n, "delta": n, "reasons": [..]}   the run's (epsilon, delta)
#   data.ppmlops.train   {"allow": bool, "reasons": [..]}               may the run train at all
#   data.ppmlops.deploy  {"outcome": "allow" | "deny" | "needs_approval", "reasons": [..], "checks": [..]}
#
# The input documents are built by ppmlops.pipeline; their shape is checked below and a field
# that is missing or of the wrong type is itself a deny reason. That check matters: a rule
# whose body reads a missing field is undefined, and an undefined deny rule would let the run
# through.
#
# Rego v1 syntax. Tests: tests/policies/test_policies.rego, run with `ppmlops policy test`
# (or `opa test policies.rego tests/policies` where an OPA binary exists).
package ppmlops

# ---------------------------------------------------------------------------------------------
# Regulation profiles. Compliance edits these numbers; the rules below read them.
#
#   max_run_epsilon        most epsilon one run may spend
#   max_delta_factor       delta must be < max_delta_factor / rows (1 means delta < 1/n)
#   min_consent_coverage   share of source rows with consent below which training is refused
#   risk_discount          run epsilon is scaled by (1 - risk_discount * risk score)
#   min_epsilon            below this a run cannot learn anything useful: refuse to train
#   (every deploy needs randomness "secure": a reproducible run's draws can be replayed)
#   needs_approval_risk    deploys at or above this risk score wait for a human
#   approval_environments  deploys to these environments always wait for a human
# ---------------------------------------------------------------------------------------------
profiles := {
	"gdpr": {
		"max_run_epsilon": 3,
		"max_delta_factor": 1,
		"min_consent_coverage": 0.9,
		"risk_discount": 0.5,
		"min_epsilon": 0.05,
		"needs_approval_risk": 0.7,
		"approval_environments": [],
	},
	"hipaa": {
		"max_run_epsilon": 1,
		"max_delta_factor": 0.1,
		"min_consent_coverage": 0.95,
		"risk_discount": 0.6,
		"min_epsilon": 0.05,
		"needs_approval_risk": 0.5,
		"approval_environments": ["production"],
	},
	"ccpa": {
		"max_run_epsilon": 5,
		"max_delta_factor": 1,
		"min_consent_coverage": 0.5,
		"risk_discount": 0.4,
		"min_epsilon": 0.05,
		"needs_approval_risk": 0.8,
		"approval_environments": [],
	},
	"none": {
		"max_run_epsilon": 10,
		"max_delta_factor": 1,
		"min_consent_coverage": 0,
		"risk_discount": 0.25,
		"min_epsilon": 0.01,
		"needs_approval_risk": 0.9,
		"approval_environments": [],
	},
}

# Scheduled runs that start late. When a DAG is unpaused, Airflow's scheduler starts the latest
# interval that ended while it was paused, whoever unpaused it: the trigger form's "unpause"
# default does it even for a trigger that Airflow then refuses, and that run would spend budget
# nobody asked to spend. A run the scheduler starts on time starts within grace_s of its
# interval's end (a tenth of the interval, at least 5 minutes: Airflow's own rule for unpaused
# DAGs); a later one is refused before anything is spent, unless a person cleared the run to run
# it again. Trigger it by hand if it is wanted, or set refuse_late to false to run such catch-ups.
scheduled_runs := {"refuse_late": true}

# Fields a model card must state before its model may serve.
required_card_fields := [
	"model_name", "dataset_id", "data_fingerprint", "epsilon", "delta",
	"accountant", "metrics", "intended_use",
]

# Deploy targets the pipeline may name; anything else is refused rather than treated as
# "not production", so a typo such as "prod" cannot skip the production checks.
environments := {"development", "test", "staging", "production"}

# Float noise allowed when comparing a spend with the plan it was filtered against.
epsilon_tolerance := 1e-9

# ---------------------------------------------------------------------------------------------
# Utility floors. Compliance edits these numbers. Each is compared with a LOWER confidence bound
# that the evaluation computed from its noisy counts (ppmlops.stages.evaluate.confidence_bounds,
# at the spec's deploy.confidence, default 95%), so DP noise cannot carry a model over a floor.
#
#   min_margin        accuracy must beat always guessing the (noisy) majority class by at least
#                     this many accuracy points on the held-out rows, beyond what the release's
#                     noise could explain; a spec's deploy.min_margin may raise it, never lower it.
#                     For a regression label (metrics.task "regression") the same margin applies
#                     to the squared error: always predicting the noisy held-out mean must have
#                     a mean squared error larger than the model's by at least this fraction of
#                     the declared range's width squared.
#                     Chance in a small held-out sample is bounded by min_holdout_rows: raise
#                     either to demand more evidence
#   min_holdout_rows  the evaluation must rest on at least this many held-out rows: compared
#                     with the noisy count's lower bound, not the count itself, because a noisy
#                     count of a small set can land far above it (sigma ~20 rows at small epsilon)
#   min_class_rows    each class must have at least this many rows: in each partition before
#                     training (the plan's noisy class counts) and in the evaluation; with fewer,
#                     AUC is undefined and accuracy says nothing
#   min_signal_to_noise, min_update_reach
#                     before the grant, the plan's public estimate of whether the run can learn
#                     at the most epsilon it could get (input.learnability,
#                     ppmlops.training.learnability): the signal-to-noise of its summed update
#                     and how far its clipped steps can move the weights (learning rate x steps x
#                     clip). On UCI Adult (benchmarks/learnability.py) runs stayed at the majority
#                     class below a ratio of 2.1 or a reach of 48 and learned from 2.5 and 95 on.
# ---------------------------------------------------------------------------------------------
utility := {"min_margin": 0, "min_holdout_rows": 100, "min_class_rows": 1, "min_signal_to_noise": 2.4, "min_update_reach": 60}

# ---------------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------------
budget := {
	"epsilon": _run_epsilon,
	"delta": input.dataset.delta,
	"reasons": _budget_reasons,
} if {
	_train_input_ok
} else := {
	"epsilon": 0,
	"delta": 0,
	"reasons": sort(_train_input_errors),
}

# Helpers below are guarded by _train_input_ok so that each is total: arithmetic on a missing
# or non-numeric field must not raise a type error, whichever rule asks for the helper.
_remaining := max([0, input.ledger.epsilon_remaining]) if _train_input_ok

_limits := {
	"request.epsilon_cap": input.request.epsilon_cap,
	"request.run_epsilon": input.request.run_epsilon,
	sprintf("%s max_run_epsilon", [input.dataset.regulation]): _profile.max_run_epsilon,
	"ledger.epsilon_remaining": _remaining,
} if _train_input_ok

_base_epsilon := min([v | some v in _limits])

_risk_factor := 1 - (_profile.risk_discount * input.risk.score) if _train_input_ok

_scaled_epsilon := max([0, _base_epsilon * _risk_factor])

# The risk factor is at most 1 for every profile above, but an edited profile must still
# never plan more than the ledger has left.
_run_epsilon := min([_scaled_epsilon, _remaining])

_budget_reasons := array.concat(
	sort([sprintf("bound by %s = %s", [k, fmt(v)]) | some k, v in _limits; v == _base_epsilon]),
	array.concat(_risk_reasons, [
		sprintf("delta %s from dataset %s", [num(input.dataset.delta), input.dataset.id]),
	]),
) if _train_input_ok

_risk_reasons := [sprintf(
	"scaled by %s for risk score %s (%s): %s -> %s",
	[fmt(_risk_factor), fmt(input.risk.score), _risk_level, fmt(_base_epsilon), fmt(_run_epsilon)],
)] if _train_input_ok

_risk_level := object.get(input.risk, "level", "level not given") if is_object(input.risk)

# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
train := {"allow": count(_train_deny) == 0, "reasons": sort(_train_deny), "sized_reasons": sort(_train_sized)}

# Reasons that quote the dataset's size (row counts): readers without a compliance role are
# shown that such a check failed, not the numbers.
_train_sized := {m | some m in _train_deny; m in _sized_reasons}

_sized_reasons := (({m | some m in _delta_errors} | {m | some m in _consent_errors}) | {m | some m in _class_errors}) | {m | some m in _learn_errors}

_train_deny contains msg if {
	some msg in _train_input_errors
}

# What the run already released (its noisy counts) is part of its epsilon; training gets the rest.
_released := object.get(input.ledger, "epsilon_released", 0) if _train_input_ok

_train_deny contains msg if {
	_train_input_ok
	_remaining - _released < _profile.min_epsilon
	msg := sprintf("budget spent: %s of the lifetime budget (epsilon %s) is used; training could add at most epsilon %s, below the %s minimum %s", [
		_percent(object.get(input.ledger, "share_used", 1)), fmt(input.dataset.epsilon_budget),
		fmt(max([0, _remaining - _released])), input.dataset.regulation, fmt(_profile.min_epsilon),
	])
}

_train_deny contains msg if {
	_train_input_ok
	_remaining - _released >= _profile.min_epsilon
	_run_epsilon - _released < _profile.min_epsilon
	msg := sprintf("planned run epsilon %s leaves %s for training after the run's noisy counts, below the %s minimum %s (%s)", [
		fmt(_run_epsilon), fmt(max([0, _run_epsilon - _released])), input.dataset.regulation, fmt(_profile.min_epsilon),
		concat("; ", _budget_reasons),
	])
}

_train_deny contains msg if {
	_train_input_ok
	some msg in _delta_errors
}

_train_deny contains msg if {
	_train_input_ok
	object.get(input.ledger, "holdout_epsilon_remaining", 0) < _profile.min_epsilon
	msg := sprintf("the held-out rows' lifetime budget is spent (a run could get %s, the %s minimum is %s): no noisy evaluation, so no deploy decision, is possible", [
		fmt(object.get(input.ledger, "holdout_epsilon_remaining", 0)), input.dataset.regulation, fmt(_profile.min_epsilon),
	])
}

_train_deny contains msg if {
	_train_input_ok
	object.get(input.request, "randomness", "secure") != "secure"
	object.get(input.request, "environment", "development") in {"staging", "production"}
	msg := sprintf("randomness %q cannot deploy to %s (its draws can be replayed): train with randomness secure", [
		object.get(input.request, "randomness", ""), object.get(input.request, "environment", ""),
	])
}

_train_deny contains msg if {
	some msg in _consent_errors
}

_train_deny contains msg if {
	scheduled_runs.refuse_late
	trigger := object.get(input.request, "trigger", {})
	object.get(trigger, "kind", "") == "scheduled"
	not object.get(trigger, "cleared", false) # a person cleared it to run again: their start, not a catch-up
	# fails closed: a scheduled run whose lateness is not stated counts as late
	late := object.get(trigger, "late_s", 1e12)
	grace := object.get(trigger, "grace_s", 0)
	late > grace
	msg := sprintf("this scheduled run started %s minutes after its interval ended (a run the scheduler starts on time starts within %s): Airflow starts a past interval when a DAG is unpaused, also by the trigger form's 'unpause' default for a trigger it refused; trigger the run by hand if it is wanted", [
		num(round(late / 60)), sprintf("%s minutes", [num(round(grace / 60))]),
	])
}

_train_deny contains msg if {
	some msg in _class_errors
}

_train_deny contains msg if {
	some msg in _learn_errors
}

_learn_fields := ["rows", "parameters", "steps", "epochs", "expected_batch", "noise_multiplier", "learning_rate",
	"max_grad_norm", "epsilon", "signal_to_noise", "update_reach"]

# The estimate is optional (none when no training fits: other rules refuse that run), but a
# malformed one is refused rather than read as "can learn".
_learn_errors contains msg if {
	_train_input_ok
	"learnability" in object.keys(input)
	some key in _learn_fields
	not is_number(object.get(object.get(input, "learnability", {}), key, null))
	msg := sprintf("input.learnability.%s must be a number", [key])
}

# A run that could not learn even at the most epsilon it could get: refused before its grant,
# with what would help (ppmlops.training.learnability; the estimate is the run's best case).
_learn_errors contains msg if {
	_train_input_ok
	learn := input.learnability
	learn.update_reach < utility.min_update_reach
	msg := sprintf("the run cannot learn: its %v steps (%v epochs over %v noisy training rows, expected batch %v) at learning rate %s and clip norm %s move the weights at most %s, below the floor %v; raise training.epochs to about %v (or the learning rate, or lower the batch size)", [
		learn.steps, learn.epochs, round(learn.rows), round(learn.expected_batch), fmt(learn.learning_rate),
		fmt(learn.max_grad_norm), fmt(learn.update_reach), utility.min_update_reach,
		ceil((learn.epochs * utility.min_update_reach) / max([learn.update_reach, 1e-9])),
	])
}

_learn_errors contains msg if {
	_train_input_ok
	learn := input.learnability
	learn.signal_to_noise < utility.min_signal_to_noise
	factor := utility.min_signal_to_noise / max([learn.signal_to_noise, 1e-9])
	msg := sprintf("the run cannot learn: the noise would swamp its updates (signal-to-noise %s at epsilon %s, below the floor %v: %v noisy training rows for %v model parameters, noise multiplier %s); about %v rows, or epsilon %s, or a model of %v parameters would reach it (more rows, more epsilon, fewer features or a smaller model)", [
		fmt(learn.signal_to_noise), fmt(learn.epsilon), utility.min_signal_to_noise, round(learn.rows), learn.parameters,
		fmt(learn.noise_multiplier), ceil(learn.rows * factor), fmt(learn.epsilon * factor),
		floor(learn.parameters / (factor * factor)),
	])
}

# A partition whose noisy class counts show a single class: refused before any training. The
# noisy count itself is compared, not a lower bound: under the count noise of a small table no
# partition could show two classes with confidence, and refusing every small run would be wrong.
# The deploy gate's metric_defined check is the one that demands confidence.
_class_errors contains msg if {
	_train_input_ok
	object.get(input.classes, "task", "binary") != "regression" # a regression label has no classes
	some partition in ["train", "holdout"]
	counts := input.classes[partition]
	counts.smallest < utility.min_class_rows
	msg := sprintf("the %s partition holds a single class of %s by its noisy counts: %v positive, %v negative (noise sigma %s), the smaller below %v rows, so a model cannot be trained and judged on it (AUC undefined, accuracy meaningless)", [
		_partition_name[partition], input.classes.label, object.get(counts, "positive", "?"), object.get(counts, "negative", "?"),
		fmt(input.classes.sigma), utility.min_class_rows,
	])
}

_partition_name := {"train": "training", "holdout": "held-out"}

_consent_errors contains msg if {
	_train_input_ok
	input.consent.coverage < _profile.min_consent_coverage
	msg := sprintf("consent coverage %s is below the %s minimum %s (%v of %v source rows refused)", [
		fmt(input.consent.coverage), input.dataset.regulation, fmt(_profile.min_consent_coverage),
		object.get(input.consent, "rows_refused", "?"), object.get(input.consent, "rows_in", "?"),
	])
}

_train_deny contains msg if {
	_train_input_ok
	count(input.risk.direct_identifiers_in_features) > 0
	msg := sprintf("direct identifiers among training features: %s", [
		concat(", ", sort([sprintf("%v", [c]) | some c in input.risk.direct_identifiers_in_features])),
	])
}

# ---------------------------------------------------------------------------------------------
# deploy
# ---------------------------------------------------------------------------------------------
deploy := {"outcome": "deny", "reasons": sort(_deploy_deny), "checks": _deploy_checks, "sized_reasons": _deploy_sized} if {
	count(_deploy_deny) > 0
} else := {"outcome": "needs_approval", "reasons": sort(_deploy_approval), "checks": _deploy_checks, "sized_reasons": _deploy_sized} if {
	count(_deploy_approval) > 0
} else := {"outcome": "allow", "reasons": [], "checks": _deploy_checks, "sized_reasons": []}

# Every deploy check, in the order people read them. The decision lists each with whether it
# passed and the reasons it did not, so a reader (the dashboard) matches reasons to checks by
# `id`, never by their wording. `quotes_sizes`: its reasons quote the dataset's (noisy) size.
deploy_checks := [
	{"id": "input", "effect": "deny", "title": "the gate's input is complete and well-formed"},
	{"id": "filter_held", "effect": "deny", "title": "the run spent no more epsilon than its fixed budget"},
	{"id": "run_epsilon_cap", "effect": "deny", "title": "the run's epsilon is within the regulation's per-run maximum"},
	{"id": "lifetime_budget", "effect": "deny", "title": "the dataset is within its lifetime budget"},
	{"id": "delta", "effect": "deny", "title": "delta is below 1/rows (times the regulation's factor)", "quotes_sizes": true},
	{"id": "accountant", "effect": "deny", "title": "the RDP accountant was used"},
	{"id": "privacy_filter", "effect": "deny", "title": "a privacy filter governed the run"},
	{"id": "audit", "effect": "deny", "title": "the canary audit's lower bound does not exceed the claimed epsilon"},
	{"id": "accuracy", "effect": "deny", "title": "noisy held-out accuracy reaches the spec's minimum (classifiers)"},
	{"id": "metric_defined", "effect": "deny", "title": "the held-out rows hold more than one class, so AUC and accuracy mean something (classifiers)", "quotes_sizes": true},
	{"id": "evaluation_size", "effect": "deny", "title": "the evaluation rests on at least the policy's minimum of held-out rows", "quotes_sizes": true},
	{"id": "beats_baseline", "effect": "deny", "title": "the model beats its task's noisy baseline (the majority class for a classifier, the mean for a regression) by the margin, with the noise's and the sample's uncertainty counted"},
	{"id": "randomness", "effect": "deny", "title": "trained with secure (CSPRNG) randomness"},
	{"id": "card_fields", "effect": "deny", "title": "the model card states every required field"},
	{"id": "card_numbers", "effect": "deny", "title": "the model card's epsilon and delta are numbers"},
	{"id": "card_epsilon", "effect": "deny", "title": "the model card does not understate epsilon"},
	{"id": "card_delta", "effect": "deny", "title": "the model card does not understate delta"},
	{"id": "risk", "effect": "needs_approval", "title": "the risk score is below the approval threshold"},
	{"id": "environment", "effect": "needs_approval", "title": "the target environment deploys without a person's approval"},
	{"id": "local_rules", "effect": "deny", "title": "the organisation's own deploy rules (added to this policy) allow it"},
	{"id": "local_approval", "effect": "needs_approval", "title": "the organisation's own rules need no person's approval"},
]

# Partial sets, so that an organisation's own rule is one line added to this file, e.g.
#   _deploy_deny contains "deployments frozen by the compliance office"
# Such reasons are listed under the check "local_rules" (or "local_approval").
_deploy_deny contains f[1] if some f in _deploy_fail

_deploy_approval contains f[1] if some f in _deploy_ask

_deploy_findings := ((_deploy_fail | _deploy_ask) | {["local_rules", r] | some r in _local_deny}) | {["local_approval", r] | some r in _local_approval}

_local_deny := _deploy_deny - {f[1] | some f in _deploy_fail}

_local_approval := _deploy_approval - {f[1] | some f in _deploy_ask}

_deploy_sized := sort([r | some c in _deploy_checks; object.get(c, "quotes_sizes", false); some r in c.reasons])

# With a malformed input only the input check says anything: the others were not evaluated.
_check_evaluated(id) := true if {
	_deploy_input_ok
} else := true if {
	id == "input"
} else := false

_deploy_checks := [object.union(c, {
	"passed": count(found) == 0,
	"evaluated": _check_evaluated(c.id),
	"reasons": found,
}) |
	some c in deploy_checks
	found := sort([f[1] | some f in _deploy_findings; f[0] == c.id])
]

_deploy_fail contains ["input", msg] if {
	some msg in _deploy_input_errors
}

_deploy_fail contains ["filter_held", msg] if {
	_deploy_input_ok
	input.privacy.epsilon_used > input.privacy.epsilon + epsilon_tolerance
	msg := sprintf("run used epsilon %s, more than its fixed budget %s: the privacy filter did not hold", [
		fmt(input.privacy.epsilon_used), fmt(input.privacy.epsilon),
	])
}

_deploy_fail contains ["run_epsilon_cap", msg] if {
	_deploy_input_ok
	input.privacy.epsilon > _profile.max_run_epsilon + epsilon_tolerance
	msg := sprintf("run's epsilon %s is above the %s maximum %s per run", [
		fmt(input.privacy.epsilon), input.dataset.regulation, fmt(_profile.max_run_epsilon),
	])
}

_deploy_fail contains ["lifetime_budget", msg] if {
	_deploy_input_ok
	input.privacy.dataset_share_used > 1
	msg := sprintf("dataset %s has used %s of its lifetime budget (epsilon %s)", [
		input.dataset.id, _percent(input.privacy.dataset_share_used), fmt(input.dataset.epsilon_budget),
	])
}

_deploy_fail contains ["delta", msg] if {
	_deploy_input_ok
	some msg in _delta_errors
}

_deploy_fail contains ["accountant", msg] if {
	_deploy_input_ok
	input.privacy.accountant != "rdp"
	msg := sprintf("accountant is %q; deploys need the RDP accountant that the privacy filter and ledger use", [
		input.privacy.accountant,
	])
}

_deploy_fail contains ["privacy_filter", msg] if {
	_deploy_input_ok
	input.privacy.filter != true
	msg := "run was not governed by a privacy filter, so its adaptive noise schedule is not covered by the accountant"
}

_deploy_fail contains ["audit", msg] if {
	_deploy_input_ok
	lower := object.get(input.audit, "epsilon_lower_bound", null)
	lower != null
	lower > input.privacy.epsilon
	msg := sprintf("the canary audit found epsilon >= %s, above the %s the accountant claims: the accounting is wrong", [
		fmt(lower), fmt(input.privacy.epsilon),
	])
}

# The label's task (ppmlops.spec.Label.task): a document without one is a binary classifier's.
_task := object.get(input, ["metrics", "task"], "binary")

_tasks := {"binary", "multiclass", "regression"}

_classifier if _task != "regression"

_deploy_fail contains ["accuracy", msg] if {
	_deploy_input_ok
	_classifier
	input.metrics.accuracy < input.metrics.min_accuracy
	msg := sprintf("accuracy %s is below the required %s", [fmt(input.metrics.accuracy), fmt(input.metrics.min_accuracy)])
}

_deploy_fail contains ["metric_defined", msg] if {
	_deploy_input_ok
	_task == "binary"
	input.metrics.auc == null
	msg := "AUC is undefined: the noisy score histogram shows a single class among the held-out rows"
}

_deploy_fail contains ["metric_defined", msg] if {
	_deploy_input_ok
	_task == "multiclass"
	input.metrics.class_rows_lower < utility.min_class_rows
	msg := sprintf("the held-out rows may hold a single class: noisy rows %v in the largest class, %v in the others; at %s confidence the rows outside any one class may be fewer than %v, so accuracy means nothing", [
		input.metrics.positives, input.metrics.negatives, _percent(input.metrics.confidence), utility.min_class_rows,
	])
}

_deploy_fail contains ["metric_defined", msg] if {
	_deploy_input_ok
	_task == "binary"
	input.metrics.class_rows_lower < utility.min_class_rows
	msg := sprintf("the held-out rows may hold a single class: noisy rows %v positive, %v negative; at %s confidence the smaller class has fewer than %v rows, so accuracy and AUC mean nothing", [
		input.metrics.positives, input.metrics.negatives, _percent(input.metrics.confidence), utility.min_class_rows,
	])
}

_deploy_fail contains ["evaluation_size", msg] if {
	_deploy_input_ok
	input.metrics.rows_lower < utility.min_holdout_rows
	msg := sprintf("the evaluation rests on too few held-out rows: %v noisy, at %s confidence as few as %v, below the minimum %v", [
		input.metrics.rows, _percent(input.metrics.confidence), floor(input.metrics.rows_lower), utility.min_holdout_rows,
	])
}

# The spec may demand a larger margin than the policy's, never a smaller one.
_min_margin := max([utility.min_margin, input.metrics.min_margin]) if {
	is_number(input.metrics.min_margin)
} else := utility.min_margin

_deploy_fail contains ["beats_baseline", msg] if {
	_deploy_input_ok
	_task == "regression"
	input.metrics.advantage_lower < _min_margin
	msg := sprintf("RMSE %s does not beat always predicting the noisy mean %s (RMSE %s) by the required margin %s: at %s confidence against the release's noise, the mean's squared error minus the model's, on the held-out rows and over the range's width squared, may be as low as %s", [
		fmt(input.metrics.rmse), fmt(input.metrics.baseline_mean), fmt(input.metrics.baseline_rmse), fmt(_min_margin),
		_percent(input.metrics.confidence), fmt(input.metrics.advantage_lower),
	])
}

_deploy_fail contains ["beats_baseline", msg] if {
	_deploy_input_ok
	_classifier
	input.metrics.advantage_lower < _min_margin
	msg := sprintf("accuracy %s does not beat always guessing the majority class (%s) by the required margin %s: at %s confidence against the release's noise, accuracy minus the majority rate on the held-out rows may be as low as %s", [
		fmt(input.metrics.accuracy), fmt(input.metrics.majority_baseline), fmt(_min_margin),
		_percent(input.metrics.confidence), fmt(input.metrics.advantage_lower),
	])
}

_deploy_fail contains ["randomness", msg] if {
	_deploy_input_ok
	input.privacy.randomness != "secure"
	msg := sprintf("trained with randomness %q: anyone who knows the seed and run id can replay its draws, so its epsilon holds against no adversary; only randomness \"secure\" deploys", [
		input.privacy.randomness,
	])
}

_deploy_fail contains ["card_fields", msg] if {
	_deploy_input_ok
	missing := [f | some f in required_card_fields; _blank(object.get(input.model_card, f, null))]
	count(missing) > 0
	msg := sprintf("model card is missing required fields: %s", [concat(", ", missing)])
}

_deploy_fail contains ["card_numbers", msg] if {
	_deploy_input_ok
	some f in ["epsilon", "delta"]
	value := object.get(input.model_card, f, null)
	not _blank(value)
	not is_number(value)
	msg := sprintf("model card field %s must be a number, got %s", [f, type_name(value)])
}

# A card may overstate the privacy cost (that is conservative) but never understate it.
_deploy_fail contains ["card_epsilon", msg] if {
	_deploy_input_ok
	is_number(input.model_card.epsilon)
	input.model_card.epsilon < input.privacy.epsilon - epsilon_tolerance
	msg := sprintf("model card states epsilon %s, less than the run's %s", [
		fmt(input.model_card.epsilon), fmt(input.privacy.epsilon),
	])
}

_deploy_fail contains ["card_delta", msg] if {
	_deploy_input_ok
	is_number(input.model_card.delta)
	input.model_card.delta < input.privacy.delta
	msg := sprintf("model card states delta %s, less than the run's %s", [num(input.model_card.delta), num(input.privacy.delta)])
}

_deploy_ask contains ["risk", msg] if {
	_deploy_input_ok
	input.risk.score >= _profile.needs_approval_risk
	msg := sprintf("risk score %s (%s) is at or above the %s approval threshold %s", [
		fmt(input.risk.score), _risk_level, input.dataset.regulation, fmt(_profile.needs_approval_risk),
	])
}

_deploy_ask contains ["environment", msg] if {
	_deploy_input_ok
	input.run.environment in _profile.approval_environments
	msg := sprintf("%s requires a human approval for every deploy to %s", [
		input.dataset.regulation, input.run.environment,
	])
}

# ---------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------
_profile := profiles[input.dataset.regulation]

# delta * rows >= factor is delta >= factor / rows without a division.
_delta_errors contains msg if {
	delta := _delta
	is_number(delta)
	is_number(input.dataset.rows)
	delta * input.dataset.rows >= _profile.max_delta_factor
	factor := num(_profile.max_delta_factor)
	msg := sprintf("delta %s is not below %s/rows = %s/%s (%s)", [
		num(delta), factor, factor, num(input.dataset.rows), input.dataset.regulation,
	])
}

# Train plans with the dataset's delta; a deploy is judged on the delta the run reports.
_delta := input.privacy.delta if {
	is_object(input.privacy)
} else := input.dataset.delta

_blank(v) if v == null

_blank(v) if v == ""

_blank(v) if v == []

_blank(v) if v == {}

# Number formatting for reasons. The numbers are for people (the exact values are in the
# input). OPA's sprintf prints a number such as 1e-05 (as Python's json writes small floats) as
# a string and big.Float products such as 0.001 * 1000 can land a hair below 1, so these use
# integer arithmetic on rounded values and never a float verb. Each is total over numbers: a
# formatter that came out undefined would make the deny rule using it undefined too.

# Two decimals.
fmt(x) := sprintf("%s%d.%02d", [_sign(x, cents), whole, cents - (whole * 100)]) if {
	cents := round(abs(x) * 100)
	whole := floor(cents / 100)
}

_sign(x, cents) := "-" if {
	x < 0
	cents > 0
} else := ""

# A share as a percentage with one decimal.
_percent(x) := concat("", [_one_decimal(x * 100), "%"])

_one_decimal(x) := sprintf("%d.%d", [whole, tenths - (whole * 10)]) if {
	tenths := round(abs(x) * 10)
	whole := floor(tenths / 10)
}

# Whole numbers as such, small ones as "1.00e-5", the rest with two decimals. (floor(x) is x
# here, but as OPA's integer: sprintf's %d prints a literal such as 1e15 as a string.)
num(x) := sprintf("%d", [floor(x)]) if {
	x == floor(x)
	abs(x) <= 1e15
} else := fmt(x) if {
	abs(x) >= 0.01
} else := _scientific(x, 19 - count(format_int(floor(y * 1000000000000000000), 10))) if {
	# |x| * 10^18 has 19 - k digits before the point, for 10^-k <= |x| < 10^-(k-1).
	y := abs(x)
	y >= 1e-18
} else := sprintf("%v", [x])

# x as m * 10^-k. The two-decimal mantissa can round up to 10.00 (9.996e-4, or 0.001 when the
# product lands below 1); that is 1.00 at the next power.
_scientific(x, k) := sprintf("%se-%d", [m, k]) if {
	m := fmt(x * _powers[k])
	not m in {"10.00", "-10.00"}
} else := sprintf("%se-%d", [fmt((x * _powers[k]) / 10), k - 1])

_powers := [
	1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
	10000000000, 100000000000, 1000000000000, 10000000000000, 100000000000000,
	1000000000000000, 10000000000000000, 100000000000000000, 1000000000000000000,
]

# ---------------------------------------------------------------------------------------------
# input shape
# ---------------------------------------------------------------------------------------------
_dataset_fields := [
	[["dataset", "id"], "string"],
	[["dataset", "regulation"], "string"],
	[["dataset", "rows"], "number"],
	[["dataset", "epsilon_budget"], "number"],
	[["dataset", "delta"], "number"],
	[["risk", "score"], "number"],
]

_train_fields := array.concat(_dataset_fields, [
	[["ledger", "epsilon_spent"], "number"],
	[["ledger", "epsilon_remaining"], "number"],
	[["risk", "direct_identifiers_in_features"], "array"],
	[["consent", "coverage"], "number"],
	[["request", "run_epsilon"], "number"],
	[["request", "epsilon_cap"], "number"],
	[["classes", "label"], "string"],
	[["classes", "sigma"], "number"],
	[["classes", "confidence"], "number"],
	[["classes", "train", "smallest"], "number"],
	[["classes", "holdout", "smallest"], "number"],
])

_deploy_fields := array.concat(_deploy_common_fields, _task_metric_fields[_task]) if {
	_tasks[_task]
} else := _deploy_common_fields

# What each task's evaluation releases (ppmlops.compliance.utility_inputs).
_task_metric_fields := {
	"binary": _classifier_fields,
	"multiclass": _classifier_fields,
	"regression": [
		[["metrics", "mae"], "number"],
		[["metrics", "rmse"], "number"],
		[["metrics", "baseline_mean"], "number"],
		[["metrics", "baseline_rmse"], "number"],
		[["metrics", "advantage_lower"], "number"],
		[["metrics", "confidence"], "number"],
		[["metrics", "rows"], "number"],
		[["metrics", "rows_lower"], "number"],
	],
}

_classifier_fields := [
	[["metrics", "accuracy"], "number"],
	[["metrics", "min_accuracy"], "number"],
	[["metrics", "majority_baseline"], "number"],
	[["metrics", "advantage_lower"], "number"],
	[["metrics", "confidence"], "number"],
	[["metrics", "rows"], "number"],
	[["metrics", "rows_lower"], "number"],
	[["metrics", "positives"], "number"],
	[["metrics", "negatives"], "number"],
	[["metrics", "class_rows_lower"], "number"],
]

_deploy_common_fields := array.concat(_dataset_fields, [
	[["run", "id"], "string"],
	[["run", "environment"], "string"],
	[["privacy", "accountant"], "string"],
	[["privacy", "filter"], "boolean"],
	[["privacy", "epsilon"], "number"],
	[["privacy", "epsilon_used"], "number"],
	[["privacy", "delta"], "number"],
	[["privacy", "dataset_share_used"], "number"],
	[["privacy", "randomness"], "string"],
	[["audit"], "object"],
	[["model_card"], "object"],
])

# [path, low, high]: inclusive bounds that make every rule above well defined.
_ranges := [
	[["dataset", "rows"], 1, 1e15],
	[["dataset", "epsilon_budget"], 0, 1e6],
	[["dataset", "delta"], 0, 1],
	[["risk", "score"], 0, 1],
	[["ledger", "epsilon_spent"], 0, 1e6],
	[["consent", "coverage"], 0, 1],
	[["request", "run_epsilon"], 0, 1e6],
	[["request", "epsilon_cap"], 0, 1e6],
	[["privacy", "epsilon"], 0, 1e6],
	[["privacy", "epsilon_used"], 0, 1e6],
	[["privacy", "delta"], 0, 1],
	[["privacy", "dataset_share_used"], 0, 1e6],
	[["metrics", "accuracy"], 0, 1],
	[["metrics", "min_accuracy"], 0, 1],
	[["metrics", "majority_baseline"], 0, 1],
	[["metrics", "advantage_lower"], -1, 1],
	[["metrics", "confidence"], 0.5, 1],
	[["metrics", "rows"], 0, 1e15],
	[["metrics", "rows_lower"], 0, 1e15],
	[["metrics", "positives"], -1e15, 1e15],
	[["metrics", "negatives"], -1e15, 1e15],
	[["metrics", "class_rows_lower"], 0, 1e15],
	[["metrics", "mae"], 0, 1e15],
	[["metrics", "rmse"], 0, 1e15],
	[["metrics", "baseline_mean"], -1e15, 1e15],
	[["metrics", "baseline_rmse"], 0, 1e15],
	[["classes", "sigma"], 0, 1e15],
	[["classes", "confidence"], 0.5, 1],
	[["classes", "train", "smallest"], 0, 1e15],
	[["classes", "holdout", "smallest"], 0, 1e15],
]

_shape_errors(fields) := {"input must be a JSON object"} if {
	not is_object(input)
} else := {msg |
	some [path, want] in fields
	got := type_name(object.get(input, path, null))
	got != want
	msg := sprintf("input.%s: expected %s, got %s", [concat(".", path), want, _describe(got)])
}

_describe(t) := "nothing (missing or null)" if t == "null"
else := t

_value_errors(fields) := {msg |
	is_object(input)
	some [path, low, high] in _ranges
	[path, "number"] in fields
	value := object.get(input, path, null)
	is_number(value)
	not _within(value, low, high)
	msg := sprintf("input.%s: %s is outside [%s, %s]", [concat(".", path), num(value), num(low), num(high)])
}

_within(v, low, high) if {
	v >= low
	v <= high
}

_common_value_errors contains msg if {
	is_object(input)
	rows := object.get(input, ["dataset", "rows"], null)
	is_number(rows)
	rows != floor(rows)
	msg := sprintf("input.dataset.rows: %s is not a whole number", [num(rows)])
}

_common_value_errors contains msg if {
	is_object(input)
	regulation := object.get(input, ["dataset", "regulation"], null)
	is_string(regulation)
	not profiles[regulation]
	msg := sprintf("input.dataset.regulation: no profile for %q (profiles: %s)", [
		regulation, concat(", ", sort(object.keys(profiles))),
	])
}

_train_input_errors := (_shape_errors(_train_fields) | _value_errors(_train_fields)) | _common_value_errors

_deploy_input_errors := ((_shape_errors(_deploy_fields) | _value_errors(_deploy_fields)) | _common_value_errors) | _deploy_extra_errors

_deploy_extra_errors contains msg if {
	is_object(input)
	not _tasks[_task]
	msg := sprintf("input.metrics.task: %s is not one of %s", [_shown_value(_task), concat(", ", sort(_tasks))])
}

_shown_value(v) := sprintf("%q", [v]) if is_string(v)
else := type_name(v)

_deploy_extra_errors contains msg if {
	is_object(input)
	environment := object.get(input, ["run", "environment"], null)
	is_string(environment)
	not environment in environments
	msg := sprintf("input.run.environment: %q is not one of %s", [environment, concat(", ", sort(environments))])
}

_deploy_extra_errors contains msg if {
	is_object(input)
	lower := object.get(input, ["audit", "epsilon_lower_bound"], null)
	not is_number(lower)
	lower != null
	msg := sprintf("input.audit.epsilon_lower_bound: expected number or null, got %s", [type_name(lower)])
}

# auc is a number in [0, 1] or null (undefined: a deny of its own); min_margin a number in
# [0, 1] or null (the policy's own then).
_deploy_extra_errors contains msg if {
	is_object(input)
	some field in ["auc", "min_margin"]
	value := object.get(input, ["metrics", field], null)
	value != null
	not _unit_number(value)
	msg := sprintf("input.metrics.%s: expected a number in [0, 1] or null, got %s", [field, _shown(value)])
}

_unit_number(v) if {
	is_number(v)
	_within(v, 0, 1)
}

_shown(v) := num(v) if is_number(v)
else := type_name(v)

_train_input_ok if count(_train_input_errors) == 0

_deploy_input_ok if count(_deploy_input_errors) == 0
