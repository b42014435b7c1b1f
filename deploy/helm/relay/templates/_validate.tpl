{{/*
relay.validate: refuse values that cannot work, before anything reaches the cluster.
Every template includes it; it renders nothing, or fails the whole render with one message
listing every problem and the value to change.
*/}}
{{- define "relay.validate" -}}
{{- $v := .Values -}}
{{- $errors := list -}}
{{- $min := include "relay.minReplicas" . | int -}}
{{- $max := include "relay.maxReplicas" . | int -}}

{{- /* publicUrl */ -}}
{{- if not $v.publicUrl -}}
{{- $errors = append $errors "publicUrl is required: the ws:// or wss:// URL clients use to reach the relay (RELAY_PUBLIC_URL), e.g. --set publicUrl=wss://relay.example.com" -}}
{{- else if not (regexMatch "^wss?://[^/?#@:]+" $v.publicUrl) -}}
{{- $errors = append $errors (printf "publicUrl must be a ws:// or wss:// URL with a host, got %q" $v.publicUrl) -}}
{{- end -}}

{{- /* Redis: more than one pod */ -}}
{{- if and (gt $max 1) (not $v.redis.existingSecret) -}}
{{- $why := "pods hand events to each other's subscribers through Redis, and share rate limits there; without it a client on one pod never sees events stored through another. Set redis.existingSecret to a Secret holding RELAY_REDIS_URL (key redis.key)" -}}
{{- if $v.autoscaling.enabled -}}
{{- $errors = append $errors (printf "autoscaling (minReplicas=%d, maxReplicas=%d) can run more than one pod, which requires Redis: %s, or keep one pod" $min $max $why) -}}
{{- else -}}
{{- $errors = append $errors (printf "replicaCount=%d requires Redis: %s, or set replicaCount=1" $max $why) -}}
{{- end -}}
{{- end -}}

{{- /* Postgres */ -}}
{{- if not $v.database.existingSecret -}}
{{- $errors = append $errors "a Postgres source is required: set database.existingSecret to a Secret holding the PostgreSQL URL under the key database.key (RELAY_DATABASE_URL). The chart runs no database, and the relay's embedded one would live in the pod's emptyDir and be lost with the pod" -}}
{{- end -}}

{{- /* S3 */ -}}
{{- if and (not $v.s3.endpoint) (not $v.s3.existingSecret) -}}
{{- $errors = append $errors "an S3 source is required: set s3.endpoint and s3.bucket, or s3.existingSecret to a Secret holding RELAY_S3_ENDPOINT and RELAY_S3_BUCKET. Git objects and refs live in the object store; without one they would be kept in the pod's data directory and lost with the pod" -}}
{{- else if and (not $v.s3.bucket) (not $v.s3.existingSecret) -}}
{{- $errors = append $errors "s3.bucket is required with s3.endpoint (or set s3.existingSecret to a Secret holding RELAY_S3_BUCKET)" -}}
{{- end -}}
{{- if and (not $v.s3.unsigned) (not $v.s3.existingSecret) -}}
{{- $errors = append $errors "S3 credentials are required: set s3.existingSecret to a Secret holding RELAY_S3_ACCESS_KEY and RELAY_S3_SECRET_KEY, or s3.unsigned=true for a store that takes unsigned requests" -}}
{{- end -}}

{{- /* Signing key */ -}}
{{- if not $v.signingKey.existingSecret -}}
{{- $errors = append $errors "a relay signing key is required: set signingKey.existingSecret to a Secret holding RELAY_SECRET_KEY (make one with `relay keygen`). Every pod signs ref state with it; without it each pod would make its own key in its emptyDir and lose it on restart" -}}
{{- end -}}

{{- /* Git scratch */ -}}
{{- if not (has $v.gitScratch.type (list "emptyDir" "ephemeral" "persistentVolumeClaim")) -}}
{{- $errors = append $errors (printf "gitScratch.type must be emptyDir, ephemeral or persistentVolumeClaim, got %q" $v.gitScratch.type) -}}
{{- end -}}
{{- if and (include "relay.sharedSingleNodeClaim" .) (gt $max 1) -}}
{{- $errors = append $errors (printf "gitScratch.type=persistentVolumeClaim with accessMode=%s is one claim shared by every pod, and %d pods cannot all mount a %s claim (pods scheduled on other nodes stay ContainerCreating with a Multi-Attach error). Use gitScratch.type=emptyDir (the default: per-pod scratch) or gitScratch.type=ephemeral (a per-pod claim); a shared claim needs accessMode=ReadWriteMany" $v.gitScratch.persistentVolumeClaim.accessMode $max $v.gitScratch.persistentVolumeClaim.accessMode) -}}
{{- end -}}

{{- /* Shutdown */ -}}
{{- $grace := float64 $v.relay.shutdownGraceSeconds -}}
{{- $preStop := float64 $v.lifecycle.preStopSleepSeconds -}}
{{- if le (float64 $v.terminationGracePeriodSeconds) (addf $grace $preStop) -}}
{{- $errors = append $errors (printf "terminationGracePeriodSeconds=%v must be greater than relay.shutdownGraceSeconds=%v + lifecycle.preStopSleepSeconds=%v, or the kubelet kills the relay (SIGKILL) before its graceful shutdown ends" $v.terminationGracePeriodSeconds $v.relay.shutdownGraceSeconds $v.lifecycle.preStopSleepSeconds) -}}
{{- end -}}

{{- /* Startup: migrations and the conformance probe run before /healthz answers */ -}}
{{- $window := mul (int $v.probes.startup.periodSeconds) (int $v.probes.startup.failureThreshold) -}}
{{- if and $v.git.probe.enabled (le (float64 $window) (float64 $v.git.probe.deadlineSeconds)) -}}
{{- $errors = append $errors (printf "probes.startup allows %d s (periodSeconds × failureThreshold) but the object store conformance probe may take up to git.probe.deadlineSeconds=%v s at start-up: the kubelet would restart the pod before it can listen. Raise probes.startup.failureThreshold" $window $v.git.probe.deadlineSeconds) -}}
{{- end -}}

{{- /* Autoscaler bounds */ -}}
{{- if $v.autoscaling.enabled -}}
{{- if lt $min 1 -}}
{{- $errors = append $errors (printf "autoscaling.minReplicas must be at least 1, got %d" $min) -}}
{{- end -}}
{{- if lt $max $min -}}
{{- $errors = append $errors (printf "autoscaling.maxReplicas=%d must not be below autoscaling.minReplicas=%d" $max $min) -}}
{{- end -}}
{{- end -}}

{{- /* extraConfig: no chart-owned setting, no credential */ -}}
{{- $managed := include "relay.managedSettings" . | fromYaml -}}
{{- $credentials := include "relay.credentialSettings" . | fromYaml -}}
{{- range $key := keys $v.extraConfig | sortAlpha -}}
{{- if hasKey $managed $key -}}
{{- $errors = append $errors (printf "extraConfig.%s is set by the chart: use %s instead" $key (get $managed $key)) -}}
{{- else if hasKey $credentials $key -}}
{{- $errors = append $errors (printf "extraConfig.%s is a credential and does not belong in values (they end up in a ConfigMap and in the release history): put it in a Secret and reference it with %s" $key (get $credentials $key)) -}}
{{- else if not (regexMatch "^RELAY_[A-Z0-9_]+$" $key) -}}
{{- $errors = append $errors (printf "extraConfig.%s is not a RELAY_* setting" $key) -}}
{{- end -}}
{{- end -}}

{{- if $errors -}}
{{- fail (printf "\n\nrelay chart: these values cannot be deployed:\n  * %s\n" (join "\n  * " $errors)) -}}
{{- end -}}
{{- end -}}
