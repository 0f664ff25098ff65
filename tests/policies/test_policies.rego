# Unit tests for policies.rego. Run: `ppmlops policy test [--coverage]` (OPA's engine, embedded),
# pytest tests/unit/test_policy_rules.py, or `opa test policies.rego tests/policies`.
package ppmlops_test

import data.ppmlops

# The documents the pipeline builds for the demo dataset (see ppmlops.pipeline).
train_input := {
	"dataset": {
		"id": "demo_customers", "regulation": "gdpr", "rows": 4700,
		"epsilon_budget": 3.0, "delta": 1e-5, "public": false,
	},
	"ledger": {"epsilon_spent": 0.0, "share_used": 0.0, "epsilon_remaining": 3.0, "holdout_epsilon_remaining": 0.5},
	"risk": {"score": 0.42, "level": "medium", "direct_identifiers_in_features": []},
	"consent": {"rows_in": 6000, "rows_refused": 300, "coverage": 0.95},
	"request": {"run_epsilon": 1.0, "epsilon_cap": 1.0, "environment": "development", "randomness": "secure"},
	"classes": {
		"label": "churned", "sigma": 40.2, "confidence": 0.95,
		"train": {"positive": 1490, "negative": 3210, "smallest": 1490},
		"holdout": {"positive": 372, "negative": 801, "smallest": 372},
	},
}

deploy_input := {
	"run": {"id": "manual__2026-01-01T00:00:00", "environment": "development"},
	"dataset": train_input.dataset,
	"risk": {"score": 0.42, "level": "medium"},
	"privacy": {
		"accountant": "rdp", "filter": true, "epsilon": 1.0, "epsilon_used": 0.97,
		"delta": 1e-5, "dataset_share_used": 0.4, "randomness": "secure",
		"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 80,
	},
	"metrics": {
		"accuracy": 0.81, "auc": 0.86, "min_accuracy": 0.6, "majority_baseline": 0.68, "min_margin": null,
		"advantage_lower": 0.09, "confidence": 0.95, "rows": 1173, "rows_lower": 1128.2,
		"positives": 372, "negatives": 801, "class_rows_lower": 340.5,
	},
	"audit": {"epsilon_lower_bound": null},
	"model_card": {
		"model_name": "demo_customers_mlp", "dataset_id": "demo_customers", "data_fingerprint": "hmac-sha256:ab12",
		"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp",
		"metrics": {"accuracy": 0.81, "auc": 0.86}, "intended_use": "demo churn scoring",
	},
}

close(a, b) if abs(a - b) < 1e-9

train_with(patch) := object.union(train_input, patch)

deploy_with(patch) := object.union(deploy_input, patch)

# --- budget ---------------------------------------------------------------------------------

test_budget_bound_by_request if {
	b := ppmlops.budget with input as train_input
	close(b.epsilon, 0.79) # min(1, 1, 3, 3) * (1 - 0.5 * 0.42)
	b.delta == 1e-5
	"bound by request.epsilon_cap = 1.00" in b.reasons
	"bound by request.run_epsilon = 1.00" in b.reasons
	"scaled by 0.79 for risk score 0.42 (medium): 1.00 -> 0.79" in b.reasons
	"delta 1.00e-5 from dataset demo_customers" in b.reasons
}

test_number_formatting if {
	ppmlops.num(4700) == "4700"
	ppmlops.num(0.5) == "0.50"
	ppmlops.num(1e-5) == "1.00e-5"
	ppmlops.num(2.5e-7) == "2.50e-7"
	ppmlops.num(0.001) == "1.00e-3" # 0.001 * 1000 is a hair below 1 in OPA's arithmetic
	ppmlops.num(9.996e-4) == "1.00e-3" # the mantissa rounds up to 10.00
	ppmlops.num(-1e-5) == "-1.00e-5"
	ppmlops.num(1e-18) == "1.00e-18"
	ppmlops.num(1e-30) != ""
	ppmlops.num(1e15) == "1000000000000000" # not sprintf's "%!d(string=1e15)"
	ppmlops.num(1e16) == "10000000000000000.00"
	ppmlops.fmt(2.98) == "2.98"
	ppmlops.fmt(3) == "3.00"
	ppmlops.fmt(-0.5) == "-0.50"
	ppmlops.fmt(-0.001) == "0.00"
}

test_budget_bound_by_ledger if {
	b := ppmlops.budget with input as train_with({"ledger": {"epsilon_spent": 2.5, "epsilon_remaining": 0.5}})
	close(b.epsilon, 0.395)
	b.reasons[0] == "bound by ledger.epsilon_remaining = 0.50"
	count([r | some r in b.reasons; startswith(r, "bound by")]) == 1
}

test_budget_bound_by_profile if {
	b := ppmlops.budget with input as train_with({
		"dataset": {"regulation": "hipaa"},
		"request": {"run_epsilon": 2.0, "epsilon_cap": 2.5},
	})
	close(b.epsilon, 1 * (1 - (0.6 * 0.42)))
	b.reasons[0] == "bound by hipaa max_run_epsilon = 1.00"
}

test_budget_never_above_remaining if {
	b := ppmlops.budget with input as train_with({
		"risk": {"score": 0},
		"ledger": {"epsilon_spent": 2.7, "epsilon_remaining": 0.3},
	})
	close(b.epsilon, 0.3)
}

test_budget_zero_risk_keeps_binding_limit if {
	b := ppmlops.budget with input as train_with({"risk": {"score": 0}})
	close(b.epsilon, 1.0)
}

test_budget_overspent_ledger_plans_nothing if {
	b := ppmlops.budget with input as train_with({"ledger": {"epsilon_spent": 3.2, "epsilon_remaining": -0.2}})
	b.epsilon == 0
}

test_budget_defined_for_malformed_input if {
	b := ppmlops.budget with input as {"dataset": {"id": "x"}}
	b.epsilon == 0
	"input.ledger.epsilon_remaining: expected number, got nothing (missing or null)" in b.reasons
}

# --- train ----------------------------------------------------------------------------------

test_train_allows_demo if {
	d := ppmlops.train with input as train_input
	d.allow == true
	d.reasons == []
}

test_train_denies_spent_budget if {
	d := ppmlops.train with input as train_with({"ledger": {"share_used": 0.987, "epsilon_remaining": 0.02}})
	d.allow == false
	d.reasons == ["budget spent: 98.7% of the lifetime budget (epsilon 3.00) is used; training could add at most epsilon 0.02, below the gdpr minimum 0.05"]
}

test_train_counts_the_runs_own_release_against_the_remainder if {
	# 0.3 could still be reached, but the run's noisy counts already took 0.28 of it
	d := ppmlops.train with input as train_with({"ledger": {"epsilon_remaining": 0.3, "epsilon_released": 0.28}})
	d.allow == false
	d.reasons == ["budget spent: 0.0% of the lifetime budget (epsilon 3.00) is used; training could add at most epsilon 0.02, below the gdpr minimum 0.05"]
}

test_train_denies_spent_holdout_budget if {
	d := ppmlops.train with input as train_with({"ledger": {"holdout_epsilon_remaining": 0.01}})
	d.allow == false
	d.reasons == ["the held-out rows' lifetime budget is spent (a run could get 0.01, the gdpr minimum is 0.05): no noisy evaluation, so no deploy decision, is possible"]
}

test_train_denies_reproducible_randomness_for_production if {
	d := ppmlops.train with input as train_with({"request": {"environment": "production", "randomness": "reproducible"}})
	d.allow == false
	d.reasons == [`randomness "reproducible" cannot deploy to production (its draws can be replayed): train with randomness secure`]
}

test_train_allows_reproducible_randomness_for_development if {
	d := ppmlops.train with input as train_with({"request": {"randomness": "reproducible"}})
	d.allow == true
}

test_train_denies_a_scheduled_run_that_started_late if {
	# unpaused on a Wednesday: the weekly interval that ended on Monday starts 2 days late
	trigger := {"kind": "scheduled", "late_s": 172800, "grace_s": 60480}
	d := ppmlops.train with input as train_with({"request": {"trigger": trigger}})
	d.allow == false
	d.reasons == ["this scheduled run started 2880 minutes after its interval ended (a run the scheduler starts on time starts within 1008 minutes): Airflow starts a past interval when a DAG is unpaused, also by the trigger form's 'unpause' default for a trigger it refused; trigger the run by hand if it is wanted"]
}

test_train_allows_a_scheduled_run_on_time_and_any_late_manual_or_backfill_run if {
	ppmlops.train.allow with input as train_with({"request": {"trigger": {"kind": "scheduled", "late_s": 40, "grace_s": 300}}})
	ppmlops.train.allow with input as train_with({"request": {"trigger": {"kind": "manual", "late_s": 1e6, "grace_s": 300}}})
	ppmlops.train.allow with input as train_with({"request": {"trigger": {"kind": "backfill", "late_s": 1e6, "grace_s": 300}}})
}

test_train_allows_a_late_scheduled_run_a_person_cleared_to_run_again if {
	trigger := {"kind": "scheduled", "late_s": 172800, "grace_s": 60480, "cleared": true}
	ppmlops.train.allow with input as train_with({"request": {"trigger": trigger}})
}

test_train_refuses_a_scheduled_run_that_does_not_say_how_late_it_is if {
	d := ppmlops.train with input as train_with({"request": {"trigger": {"kind": "scheduled"}}})
	d.allow == false
}

test_train_runs_late_scheduled_runs_when_the_office_allows_them if {
	trigger := {"kind": "scheduled", "late_s": 172800, "grace_s": 60480}
	ppmlops.train.allow with input as train_with({"request": {"trigger": trigger}})
		with ppmlops.scheduled_runs as {"refuse_late": false}
}

test_train_denies_plan_below_minimum if {
	# 0.06 * (1 - 0.5 * 0.9) = 0.033 < 0.05, although the ledger has plenty left
	d := ppmlops.train with input as train_with({
		"risk": {"score": 0.9},
		"request": {"epsilon_cap": 0.06},
	})
	d.allow == false
	count(d.reasons) == 1
	startswith(d.reasons[0], "planned run epsilon 0.03 leaves 0.03 for training after the run's noisy counts, below the gdpr minimum 0.05")
}

test_train_denies_delta_at_one_over_rows if {
	d := ppmlops.train with input as train_with({"dataset": {"rows": 100000}})
	d.allow == false
	d.reasons == ["delta 1.00e-5 is not below 1/rows = 1/100000 (gdpr)"]
}

test_train_allows_delta_just_below_one_over_rows if {
	d := ppmlops.train with input as train_with({"dataset": {"rows": 99999}})
	d.allow == true
}

test_train_denies_low_consent if {
	d := ppmlops.train with input as train_with({"consent": {"coverage": 0.85, "rows_refused": 900}})
	d.allow == false
	d.reasons == ["consent coverage 0.85 is below the gdpr minimum 0.90 (900 of 6000 source rows refused)"]
	d.sized_reasons == d.reasons  # it quotes row counts
}

learn := {
	"rows": 2400, "parameters": 6850, "steps": 45, "epochs": 5, "expected_batch": 256, "noise_multiplier": 4.66,
	"learning_rate": 0.5, "max_grad_norm": 1, "epsilon": 1, "signal_to_noise": 6.9, "update_reach": 22.5,
}

test_train_denies_a_run_with_too_few_steps_to_learn if {
	d := ppmlops.train with input as object.union(train_input, {"learnability": learn})
	d.allow == false
	d.reasons == ["the run cannot learn: its 45 steps (5 epochs over 2400 noisy training rows, expected batch 256) at learning rate 0.50 and clip norm 1.00 move the weights at most 22.50, below the floor 60; raise training.epochs to about 14 (or the learning rate, or lower the batch size)"]
	d.sized_reasons == d.reasons  # it quotes the noisy row count
}

test_train_denies_a_run_the_noise_would_swamp if {
	d := ppmlops.train with input as object.union(train_input, {"learnability": object.union(learn, {
		"update_reach": 200, "signal_to_noise": 1.5, "epsilon": 0.25})})
	d.allow == false
	d.reasons == ["the run cannot learn: the noise would swamp its updates (signal-to-noise 1.50 at epsilon 0.25, below the floor 2.4: 2400 noisy training rows for 6850 model parameters, noise multiplier 4.66); about 3840 rows, or epsilon 0.40, or a model of 2675 parameters would reach it (more rows, more epsilon, fewer features or a smaller model)"]
}

test_train_allows_a_run_that_can_learn if {
	d := ppmlops.train with input as object.union(train_input, {"learnability": object.union(learn, {
		"update_reach": 60, "signal_to_noise": 2.4})})
	d.allow == true
}

test_train_denies_a_malformed_learnability_estimate if {
	d := ppmlops.train with input as object.union(train_input, {"learnability": object.union(learn, {"update_reach": "far"})})
	d.allow == false
	d.reasons == ["input.learnability.update_reach must be a number"]
}

test_train_denies_direct_identifiers if {
	d := ppmlops.train with input as train_with({"risk": {"direct_identifiers_in_features": ["ssn", "email"]}})
	d.allow == false
	d.reasons == ["direct identifiers among training features: email, ssn"]
}

test_train_lists_every_reason if {
	d := ppmlops.train with input as train_with({
		"ledger": {"share_used": 1.0, "epsilon_remaining": 0},
		"consent": {"coverage": 0.1},
		"risk": {"direct_identifiers_in_features": ["ssn"]},
	})
	d.allow == false
	count(d.reasons) == 3
}

test_train_denies_unknown_regulation if {
	d := ppmlops.train with input as train_with({"dataset": {"regulation": "pdpa"}})
	d.allow == false
	d.reasons == [`input.dataset.regulation: no profile for "pdpa" (profiles: ccpa, gdpr, hipaa, none)`]
}

test_train_denies_missing_field if {
	d := ppmlops.train with input as json.remove(train_input, ["consent/coverage"])
	d.allow == false
	d.reasons == ["input.consent.coverage: expected number, got nothing (missing or null)"]
}

test_train_denies_wrong_type if {
	d := ppmlops.train with input as train_with({"dataset": {"rows": "4700"}})
	d.allow == false
	d.reasons == ["input.dataset.rows: expected number, got string"]
}

test_train_denies_out_of_range if {
	d := ppmlops.train with input as train_with({"risk": {"score": 1.5}})
	d.allow == false
	d.reasons == ["input.risk.score: 1.50 is outside [0, 1]"]
}

test_train_denies_fractional_rows if {
	d := ppmlops.train with input as train_with({"dataset": {"rows": 4700.5}})
	d.allow == false
	d.reasons == ["input.dataset.rows: 4700.50 is not a whole number"]
}

test_train_denies_rows_out_of_range if {
	d := ppmlops.train with input as train_with({"dataset": {"rows": 0}})
	d.allow == false
	"input.dataset.rows: 0 is outside [1, 1000000000000000]" in d.reasons
}

test_train_denies_non_object_input if {
	d := ppmlops.train with input as ["not", "an", "object"]
	d.allow == false
	d.reasons == ["input must be a JSON object"]
}

test_train_profile_none_has_no_consent_floor if {
	d := ppmlops.train with input as train_with({"dataset": {"regulation": "none"}, "consent": {"coverage": 0}})
	d.allow == true
}

# --- deploy ---------------------------------------------------------------------------------

test_deploy_allows_demo if {
	d := ppmlops.deploy with input as deploy_input
	d.outcome == "allow"
	d.reasons == []
}

test_deploy_lists_every_check_with_its_result if {
	d := ppmlops.deploy with input as deploy_with({"metrics": {"accuracy": 0.1}})
	d.outcome == "deny"
	[c.id | some c in d.checks] == [c.id | some c in ppmlops.deploy_checks]
	failed := [c | some c in d.checks; not c.passed]
	[c.id | some c in failed] == ["accuracy"]
	failed[0].reasons == d.reasons
	every c in d.checks { c.evaluated }
}

test_deploy_checks_after_a_malformed_input_are_not_evaluated if {
	d := ppmlops.deploy with input as {"run": 1}
	[c.id | some c in d.checks; not c.passed] == ["input"]
	[c.id | some c in d.checks; c.evaluated] == ["input"]
}

test_reasons_quoting_the_dataset_size_are_marked if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"delta": 1e-3}, "model_card": {"delta": 1e-3}})
	count(d.sized_reasons) == 1
	[c.id | some c in d.checks; not c.passed] == ["delta"]
	[c | some c in d.checks; c.id == "delta"][0].reasons == d.sized_reasons
	allowed := ppmlops.deploy with input as deploy_input
	allowed.sized_reasons == []
}

test_deploy_approval_reasons_belong_to_their_check if {
	d := ppmlops.deploy with input as deploy_with({"risk": {"score": 0.95}})
	d.outcome == "needs_approval"
	[c.id | some c in d.checks; not c.passed] == ["risk"]
}

test_deploy_tolerates_float_noise_in_spend if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"epsilon_used": 1.0000000000001}})
	d.outcome == "allow"
}

test_deploy_denies_overspent_run if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"epsilon_used": 1.01}})
	d.outcome == "deny"
	d.reasons == ["run used epsilon 1.01, more than its fixed budget 1.00: the privacy filter did not hold"]
}

test_deploy_denies_dataset_over_budget if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"dataset_share_used": 1.004}})
	d.outcome == "deny"
	d.reasons == ["dataset demo_customers has used 100.4% of its lifetime budget (epsilon 3.00)"]
}

test_deploy_denies_plan_above_profile_maximum if {
	d := ppmlops.deploy with input as deploy_with({"dataset": {"regulation": "hipaa"}, "privacy": {"epsilon": 2.0}, "model_card": {"epsilon": 2.0}})
	d.outcome == "deny"
	d.reasons == ["run's epsilon 2.00 is above the hipaa maximum 1.00 per run"]
}

test_deploy_denies_large_delta if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"delta": 1e-3}, "model_card": {"delta": 1e-3}})
	d.outcome == "deny"
	d.reasons == ["delta 1.00e-3 is not below 1/rows = 1/4700 (gdpr)"]
}

test_deploy_denies_other_accountant if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"accountant": "prv"}})
	d.outcome == "deny"
	d.reasons == [`accountant is "prv"; deploys need the RDP accountant that the privacy filter and ledger use`]
}

test_deploy_denies_run_without_filter if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"filter": false}})
	d.outcome == "deny"
	d.reasons == ["run was not governed by a privacy filter, so its adaptive noise schedule is not covered by the accountant"]
}

test_deploy_denies_audit_above_claim if {
	d := ppmlops.deploy with input as deploy_with({"audit": {"epsilon_lower_bound": 1.5}})
	d.outcome == "deny"
	d.reasons == ["the canary audit found epsilon >= 1.50, above the 1.00 the accountant claims: the accounting is wrong"]
}

test_deploy_allows_audit_below_claim if {
	d := ppmlops.deploy with input as deploy_with({"audit": {"epsilon_lower_bound": 0.4}})
	d.outcome == "allow"
}

test_deploy_denies_low_accuracy if {
	d := ppmlops.deploy with input as deploy_with({"metrics": {"accuracy": 0.55}})
	d.outcome == "deny"
	d.reasons == ["accuracy 0.55 is below the required 0.60"]
}

test_deploy_denies_reproducible_randomness_in_every_environment if {
	some env in ["development", "test", "staging", "production"]
	d := ppmlops.deploy with input as deploy_with({"run": {"environment": env}, "privacy": {"randomness": "reproducible"}})
	d.outcome == "deny"
	d.reasons == [`trained with randomness "reproducible": anyone who knows the seed and run id can replay its draws, so its epsilon holds against no adversary; only randomness "secure" deploys`]
}

test_deploy_allows_production_with_secure_randomness if {
	d := ppmlops.deploy with input as deploy_with({"run": {"environment": "production"}})
	d.outcome == "allow"
}

test_deploy_denies_unknown_environment if {
	d := ppmlops.deploy with input as deploy_with({"run": {"environment": "prod"}})
	d.outcome == "deny"
	d.reasons == [`input.run.environment: "prod" is not one of development, production, staging, test`]
}

test_deploy_denies_incomplete_model_card if {
	card := json.remove(deploy_input.model_card, ["intended_use", "data_fingerprint"])
	d := ppmlops.deploy with input as json.patch(deploy_input, [{"op": "replace", "path": "/model_card", "value": object.union(card, {"accountant": ""})}])
	d.outcome == "deny"
	d.reasons == ["model card is missing required fields: data_fingerprint, accountant, intended_use"]
}

test_deploy_denies_card_understating_epsilon if {
	d := ppmlops.deploy with input as deploy_with({"model_card": {"epsilon": 0.5}})
	d.outcome == "deny"
	d.reasons == ["model card states epsilon 0.50, less than the run's 1.00"]
}

test_deploy_denies_card_with_empty_fields if {
	d := ppmlops.deploy with input as json.patch(deploy_input, [
		{"op": "replace", "path": "/model_card/metrics", "value": {}},
		{"op": "replace", "path": "/model_card/intended_use", "value": []},
	])
	d.outcome == "deny"
	d.reasons == ["model card is missing required fields: metrics, intended_use"]
}

test_deploy_denies_card_with_non_numeric_epsilon if {
	d := ppmlops.deploy with input as deploy_with({"model_card": {"epsilon": "0.97"}})
	d.outcome == "deny"
	d.reasons == ["model card field epsilon must be a number, got string"]
}

test_deploy_denies_card_understating_delta if {
	d := ppmlops.deploy with input as deploy_with({"model_card": {"delta": 1e-6}})
	d.outcome == "deny"
	d.reasons == ["model card states delta 1.00e-6, less than the run's 1.00e-5"]
}

test_deploy_denies_non_numeric_audit_bound if {
	d := ppmlops.deploy with input as deploy_with({"audit": {"epsilon_lower_bound": "0.4"}})
	d.outcome == "deny"
	d.reasons == ["input.audit.epsilon_lower_bound: expected number or null, got string"]
}

test_deploy_denies_missing_manifest_section if {
	d := ppmlops.deploy with input as json.remove(deploy_input, ["audit"])
	d.outcome == "deny"
	d.reasons == ["input.audit: expected object, got nothing (missing or null)"]
}

test_deploy_needs_approval_for_high_risk if {
	d := ppmlops.deploy with input as deploy_with({"risk": {"score": 0.7, "level": "high"}})
	d.outcome == "needs_approval"
	d.reasons == ["risk score 0.70 (high) is at or above the gdpr approval threshold 0.70"]
}

test_deploy_needs_approval_when_profile_demands_it if {
	d := ppmlops.deploy with input as deploy_with({
		"dataset": {"regulation": "hipaa"},
		"run": {"environment": "production"},
		"risk": {"score": 0.1, "level": "low"},
	})
	d.outcome == "needs_approval"
	d.reasons == ["hipaa requires a human approval for every deploy to production"]
}

test_deploy_deny_takes_precedence_over_approval if {
	d := ppmlops.deploy with input as deploy_with({"risk": {"score": 0.9}, "metrics": {"accuracy": 0.1}})
	d.outcome == "deny"
	d.reasons == ["accuracy 0.10 is below the required 0.60"]
}

# --- malformed input: every decision stays defined and refuses -------------------------------
# These also check that no helper
# rule raises a type error on bad input.

test_train_denies_non_numeric_risk if {
	d := ppmlops.train with input as train_with({"risk": {"score": "high"}})
	d.allow == false
	d.reasons == ["input.risk.score: expected number, got string"]
}

test_budget_plans_nothing_for_non_object_section if {
	b := ppmlops.budget with input as object.union(train_input, {"risk": "high"})
	b.epsilon == 0
	"input.risk.score: expected number, got nothing (missing or null)" in b.reasons
}

test_deploy_denies_null_section if {
	d := ppmlops.deploy with input as object.union(deploy_input, {"risk": null})
	d.outcome == "deny"
	d.reasons == ["input.risk.score: expected number, got nothing (missing or null)"]
}

test_deploy_denies_non_boolean_filter if {
	d := ppmlops.deploy with input as deploy_with({"privacy": {"filter": "yes"}})
	d.outcome == "deny"
	d.reasons == ["input.privacy.filter: expected boolean, got string"]
}

# --- utility: the model must beat guessing, on enough rows of both classes (issue 26) ----------

# The three deployed cases of issue 26, as the evaluation now reports them.
below_baseline := {"metrics": {"accuracy": 0.675, "auc": 0.436, "majority_baseline": 0.8245, "advantage_lower": -0.19}}

fifty_rows := {"metrics": {
	"accuracy": 1.0, "auc": 0.9, "majority_baseline": 0.7, "advantage_lower": -1,
	"rows": 11, "rows_lower": 0, "positives": 4, "negatives": 7, "class_rows_lower": 0,
}}

one_class := {"metrics": {
	"accuracy": 0.952, "auc": 0.859, "majority_baseline": 0.96, "advantage_lower": -0.05,
	"positives": 3, "negatives": 1120, "class_rows_lower": 0,
}}

_failed(d, id) if {
	some c in d.checks
	c.id == id
	not c.passed
}

test_deploy_denies_model_below_its_majority_baseline if {
	d := ppmlops.deploy with input as deploy_with(below_baseline)
	d.outcome == "deny"
	_failed(d, "beats_baseline")
	"accuracy 0.68 does not beat always guessing the majority class (0.82) by the required margin 0.00: at 95.0% confidence against the release's noise, accuracy minus the majority rate on the held-out rows may be as low as -0.19" in d.reasons
}

test_deploy_denies_a_noisy_win_inside_the_confidence if {
	# The point estimate beats the baseline by 0.13, but the bound does not: noise could explain it.
	d := ppmlops.deploy with input as deploy_with({"metrics": {"advantage_lower": -0.001}})
	d.outcome == "deny"
	_failed(d, "beats_baseline")
}

test_deploy_margin_is_the_officers_floor_and_the_spec_may_raise_it if {
	ppmlops.deploy.outcome == "deny" with input as deploy_with({"metrics": {"min_margin": 0.1}})
	ppmlops.deploy.outcome == "allow" with input as deploy_with({"metrics": {"min_margin": 0.05}})
	# an officer's margin in Rego binds whatever the spec says
	d := ppmlops.deploy with input as deploy_with({"metrics": {"min_margin": 0}}) with ppmlops.utility as {"min_margin": 0.1, "min_holdout_rows": 100, "min_class_rows": 1}
	_failed(d, "beats_baseline")
	contains(concat(" ", d.reasons), "by the required margin 0.10")
}

test_deploy_denies_an_evaluation_on_too_few_rows if {
	d := ppmlops.deploy with input as deploy_with(fifty_rows)
	d.outcome == "deny"
	_failed(d, "evaluation_size")
	"the evaluation rests on too few held-out rows: 11 noisy, at 95.0% confidence as few as 0, below the minimum 100" in d.reasons
	"the evaluation rests on too few held-out rows: 11 noisy, at 95.0% confidence as few as 0, below the minimum 100" in d.sized_reasons
	_failed(d, "beats_baseline")
}

test_deploy_size_floor_reads_the_lower_bound_not_the_noisy_count if {
	d := ppmlops.deploy with input as deploy_with({"metrics": {"rows": 130, "rows_lower": 95}})
	_failed(d, "evaluation_size")
}

test_deploy_denies_one_class_holdout if {
	d := ppmlops.deploy with input as deploy_with(one_class)
	d.outcome == "deny"
	_failed(d, "metric_defined")
	"the held-out rows may hold a single class: noisy rows 3 positive, 1120 negative; at 95.0% confidence the smaller class has fewer than 1 rows, so accuracy and AUC mean nothing" in d.reasons
}

test_deploy_denies_undefined_auc if {
	d := ppmlops.deploy with input as deploy_with({"metrics": {"auc": null}})
	d.outcome == "deny"
	_failed(d, "metric_defined")
	"AUC is undefined: the noisy score histogram shows a single class among the held-out rows" in d.reasons
}

test_deploy_input_check_covers_the_utility_fields if {
	some field in ["majority_baseline", "advantage_lower", "confidence", "rows", "rows_lower", "positives", "negatives", "class_rows_lower"]
	d := ppmlops.deploy with input as json.remove(deploy_input, [concat("/", ["metrics", field])])
	d.outcome == "deny"
	sprintf("input.metrics.%s: expected number, got nothing (missing or null)", [field]) in d.reasons
}

test_deploy_input_check_rejects_bad_auc_and_margin if {
	a := ppmlops.deploy with input as deploy_with({"metrics": {"auc": "0.9"}})
	"input.metrics.auc: expected a number in [0, 1] or null, got string" in a.reasons
	m := ppmlops.deploy with input as deploy_with({"metrics": {"min_margin": 2}})
	"input.metrics.min_margin: expected a number in [0, 1] or null, got 2" in m.reasons
	r := ppmlops.deploy with input as deploy_with({"metrics": {"advantage_lower": 3}})
	"input.metrics.advantage_lower: 3 is outside [-1, 1]" in r.reasons
}

test_train_denies_a_partition_with_one_class if {
	t := ppmlops.train with input as train_with({"classes": {"holdout": {"positive": -12, "negative": 1201, "smallest": 0}}})
	not t.allow
	msg := "the held-out partition holds a single class of churned by its noisy counts: -12 positive, 1201 negative (noise sigma 40.20), the smaller below 1 rows, so a model cannot be trained and judged on it (AUC undefined, accuracy meaningless)"
	msg in t.reasons
	msg in t.sized_reasons
	u := ppmlops.train with input as train_with({"classes": {"train": {"positive": 4700, "negative": -20, "smallest": 0}}})
	not u.allow
	contains(concat(" ", u.reasons), "the training partition holds a single class of churned")
}

test_train_denies_missing_class_counts if {
	t := ppmlops.train with input as json.remove(train_input, ["classes"])
	not t.allow
	"input.classes.train.smallest: expected number, got nothing (missing or null)" in t.reasons
}

# --- every label.task beats its own noisy baseline (issue 29 items 3 and 5) -------------------

multiclass_metrics := {
	"task": "multiclass", "accuracy": 0.91, "auc": null, "min_accuracy": 0.6, "majority_baseline": 0.11,
	"min_margin": null, "macro_f1": 0.9, "advantage_lower": 0.7, "confidence": 0.95, "rows": 360,
	"rows_lower": 250.0, "positives": 40, "negatives": 320, "class_rows_lower": 210.0,
}

regression_metrics := {
	"task": "regression", "mae": 7.1, "rmse": 10.2, "baseline_mean": 40.3, "baseline_rmse": 12.4,
	"min_margin": null, "advantage_lower": 0.004, "confidence": 0.95, "rows": 1180, "rows_lower": 1100.0,
}

with_metrics(m) := object.union(json.remove(deploy_input, ["metrics"]), {"metrics": m})

test_deploy_allows_a_multiclass_model_above_its_majority_class if {
	d := ppmlops.deploy with input as with_metrics(multiclass_metrics)
	d.outcome == "allow"
}

test_deploy_denies_a_multiclass_model_below_its_majority_class if {
	d := ppmlops.deploy with input as with_metrics(object.union(multiclass_metrics, {"accuracy": 0.1, "advantage_lower": -0.05}))
	d.outcome == "deny"
	_failed(d, "beats_baseline")
	"accuracy 0.10 does not beat always guessing the majority class (0.11) by the required margin 0.00: at 95.0% confidence against the release's noise, accuracy minus the majority rate on the held-out rows may be as low as -0.05" in d.reasons
}

test_deploy_multiclass_needs_no_auc_but_more_than_one_class if {
	# AUC is a binary metric: null is no reason to deny a multiclass model...
	ppmlops.deploy.outcome == "allow" with input as with_metrics(multiclass_metrics)
	# ...but held-out rows that may all be one class are
	d := ppmlops.deploy with input as with_metrics(object.union(multiclass_metrics, {"class_rows_lower": 0}))
	_failed(d, "metric_defined")
	"the held-out rows may hold a single class: noisy rows 40 in the largest class, 320 in the others; at 95.0% confidence the rows outside any one class may be fewer than 1, so accuracy means nothing" in d.reasons
}

test_deploy_allows_a_regression_model_that_beats_the_mean if {
	d := ppmlops.deploy with input as with_metrics(regression_metrics)
	d.outcome == "allow"
}

test_deploy_denies_a_regression_model_no_better_than_the_mean if {
	d := ppmlops.deploy with input as with_metrics(object.union(regression_metrics, {"rmse": 12.5, "advantage_lower": -0.01}))
	d.outcome == "deny"
	_failed(d, "beats_baseline")
	"RMSE 12.50 does not beat always predicting the noisy mean 40.30 (RMSE 12.40) by the required margin 0.00: at 95.0% confidence against the release's noise, the mean's squared error minus the model's, on the held-out rows and over the range's width squared, may be as low as -0.01" in d.reasons
}

test_deploy_regression_keeps_the_size_floor if {
	d := ppmlops.deploy with input as with_metrics(object.union(regression_metrics, {"rows": 60, "rows_lower": 12}))
	_failed(d, "evaluation_size")
}

test_deploy_input_check_follows_the_task if {
	# a regression document needs its own fields, not a classifier's
	some field in ["mae", "rmse", "baseline_rmse", "advantage_lower", "rows_lower"]
	d := ppmlops.deploy with input as json.remove(with_metrics(regression_metrics), [concat("/", ["metrics", field])])
	sprintf("input.metrics.%s: expected number, got nothing (missing or null)", [field]) in d.reasons
}

test_deploy_input_check_rejects_an_unknown_task if {
	d := ppmlops.deploy with input as deploy_with({"metrics": {"task": "ranking"}})
	d.outcome == "deny"
	"input.metrics.task: \"ranking\" is not one of binary, multiclass, regression" in d.reasons
	n := ppmlops.deploy with input as deploy_with({"metrics": {"task": 3}})
	"input.metrics.task: number is not one of binary, multiclass, regression" in n.reasons
}

test_train_class_rule_skips_regression if {
	spread := {"classes": {
		"label": "hours", "sigma": 40.2, "confidence": 0.95, "task": "regression",
		"train": {"positive": 4700, "negative": 0, "smallest": 0},
		"holdout": {"positive": 1173, "negative": 0, "smallest": 0},
	}}
	d := ppmlops.train with input as train_with(spread)
	not _any_class_reason(d.reasons)
}

_any_class_reason(reasons) if {
	some r in reasons
	contains(r, "holds a single class")
}
