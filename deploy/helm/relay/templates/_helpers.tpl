{{/* Names and labels. */}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relay
{{- end -}}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "relay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The fewest and the most pods that can run at once (the autoscaler's bounds when on). */}}
{{- define "relay.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.minReplicas | int }}{{- else -}}{{ .Values.replicaCount | int }}{{- end -}}
{{- end -}}

{{- define "relay.maxReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas | int }}{{- else -}}{{ .Values.replicaCount | int }}{{- end -}}
{{- end -}}

{{/* RELAY_HOSTS: the hosts value, or the host of publicUrl. */}}
{{- define "relay.hosts" -}}
{{- if .Values.hosts -}}
{{- join "," .Values.hosts -}}
{{- else -}}
{{- (urlParse (default "" .Values.publicUrl)).hostname -}}
{{- end -}}
{{- end -}}

{{/* Does the git scratch use one claim shared by every pod, mountable on one node only? */}}
{{- define "relay.sharedSingleNodeClaim" -}}
{{- if and (eq .Values.gitScratch.type "persistentVolumeClaim") (has .Values.gitScratch.persistentVolumeClaim.accessMode (list "ReadWriteOnce" "ReadWriteOncePod")) -}}true{{- end -}}
{{- end -}}

{{- define "relay.scratchClaimName" -}}
{{- default (printf "%s-git-scratch" (include "relay.fullname" .)) .Values.gitScratch.persistentVolumeClaim.existingClaim -}}
{{- end -}}

{{/*
Settings the chart owns (ConfigMap keys). extraConfig may not set these, nor a credential.
*/}}
{{- define "relay.managedSettings" -}}
RELAY_BIND: the chart (always 0.0.0.0)
RELAY_PORT: containerPort
RELAY_DATA_DIR: dataDir.mountPath
RELAY_PUBLIC_URL: publicUrl
RELAY_HOSTS: hosts
RELAY_NAME: relay.name
RELAY_DESCRIPTION: relay.description
RELAY_CONTACT: relay.contact
RELAY_ADMIN_PUBKEY: relay.adminPubkey
RELAY_LOG_LEVEL: relay.logLevel
RELAY_LOG_FORMAT: relay.logFormat
RELAY_SHUTDOWN_GRACE: relay.shutdownGraceSeconds
RELAY_TRUSTED_PROXIES: relay.trustedProxies
RELAY_RATE_LIMIT_LOOPBACK: relay.rateLimitLoopback
RELAY_WEB_PAGES: relay.webPages
RELAY_WORKERS: workers
RELAY_DB_POOL_SIZE: database.poolSize
RELAY_REDIS_PREFIX: redis.prefix
RELAY_S3_REGION: s3.region
RELAY_S3_ADDRESSING: s3.addressing
RELAY_S3_TIMEOUT_SECONDS: s3.timeoutSeconds
RELAY_GIT_PROBE: git.probe.enabled
RELAY_GIT_PROBE_WRITERS: git.probe.writers
RELAY_GIT_PROBE_ROUNDS: git.probe.rounds
RELAY_GIT_PROBE_DEADLINE_SECONDS: git.probe.deadlineSeconds
RELAY_GIT_PUBLIC_READ: git.publicRead
RELAY_GIT_MAX_REPOS_PER_PUBKEY: git.maxReposPerPubkey
RELAY_GIT_MAX_PACK_BYTES: git.maxPackBytes
RELAY_GIT_MAX_REPO_BYTES: git.maxRepoBytes
RELAY_GIT_MAX_PROCESSES: git.maxProcesses
RELAY_GIT_TIMEOUT_SECONDS: git.timeoutSeconds
RELAY_GIT_RECONCILE_SECONDS: git.reconcileSeconds
RELAY_GIT_PROVISION: git.provision
RELAY_GIT_PURGATORY_SECONDS: git.purgatorySeconds
RELAY_GIT_SCRATCH_DIR: gitScratch.mountPath
{{- end -}}

{{/*
The relay container's resources: the CPU request is workers x cpuPerWorkerMillicores (one
worker's for "auto") unless resources.requests.cpu is set.
*/}}
{{- define "relay.resources" -}}
{{- $v := .Values -}}
{{- $resources := deepCopy $v.resources -}}
{{- $requests := default (dict) $resources.requests -}}
{{- if not $requests.cpu -}}
{{- $workers := 1 -}}
{{- if not (kindIs "string" $v.workers) }}{{ $workers = $v.workers | int }}{{ end -}}
{{- $_ := set $requests "cpu" (printf "%dm" (mul $workers ($v.cpuPerWorkerMillicores | int))) -}}
{{- end -}}
{{- $_ := set $resources "requests" $requests -}}
{{- toYaml $resources -}}
{{- end -}}

{{- define "relay.credentialSettings" -}}
RELAY_DATABASE_URL: database.existingSecret
RELAY_REDIS_URL: redis.existingSecret
RELAY_SECRET_KEY: signingKey.existingSecret
RELAY_S3_ENDPOINT: s3.endpoint or s3.existingSecret
RELAY_S3_BUCKET: s3.bucket or s3.existingSecret
RELAY_S3_ACCESS_KEY: s3.existingSecret
RELAY_S3_SECRET_KEY: s3.existingSecret
{{- end -}}

{{/*
The non-secret settings, as ConfigMap data (every value a string). Integers go through int64:
values arrive as float64 and would otherwise print as 2.68435456e+08.
*/}}
{{- define "relay.settings" -}}
{{- $v := .Values -}}
{{- $s := dict -}}
{{- $_ := set $s "RELAY_BIND" "0.0.0.0" -}}
{{- $_ = set $s "RELAY_PORT" ($v.containerPort | int64 | toString) -}}
{{- $_ = set $s "RELAY_DATA_DIR" $v.dataDir.mountPath -}}
{{- $_ = set $s "RELAY_PUBLIC_URL" $v.publicUrl -}}
{{- $_ = set $s "RELAY_HOSTS" (include "relay.hosts" .) -}}
{{- with $v.relay.name }}{{ $_ = set $s "RELAY_NAME" . }}{{ end -}}
{{- with $v.relay.description }}{{ $_ = set $s "RELAY_DESCRIPTION" . }}{{ end -}}
{{- with $v.relay.contact }}{{ $_ = set $s "RELAY_CONTACT" . }}{{ end -}}
{{- with $v.relay.adminPubkey }}{{ $_ = set $s "RELAY_ADMIN_PUBKEY" . }}{{ end -}}
{{- $_ = set $s "RELAY_LOG_LEVEL" $v.relay.logLevel -}}
{{- $_ = set $s "RELAY_LOG_FORMAT" $v.relay.logFormat -}}
{{- $_ = set $s "RELAY_SHUTDOWN_GRACE" ($v.relay.shutdownGraceSeconds | toString) -}}
{{- $_ = set $s "RELAY_TRUSTED_PROXIES" (join "," $v.relay.trustedProxies) -}}
{{- $_ = set $s "RELAY_RATE_LIMIT_LOOPBACK" (ternary "on" "off" $v.relay.rateLimitLoopback) -}}
{{- $_ = set $s "RELAY_WEB_PAGES" (ternary "on" "off" $v.relay.webPages) -}}
{{- $_ = set $s "RELAY_WORKERS" ($v.workers | toString) -}}
{{- $_ = set $s "RELAY_DB_POOL_SIZE" ($v.database.poolSize | int64 | toString) -}}
{{- $_ = set $s "RELAY_REDIS_PREFIX" $v.redis.prefix -}}
{{- with $v.s3.endpoint }}{{ $_ = set $s "RELAY_S3_ENDPOINT" . }}{{ end -}}
{{- with $v.s3.bucket }}{{ $_ = set $s "RELAY_S3_BUCKET" . }}{{ end -}}
{{- $_ = set $s "RELAY_S3_REGION" $v.s3.region -}}
{{- $_ = set $s "RELAY_S3_ADDRESSING" $v.s3.addressing -}}
{{- $_ = set $s "RELAY_S3_TIMEOUT_SECONDS" ($v.s3.timeoutSeconds | toString) -}}
{{- $_ = set $s "RELAY_GIT_PROBE" (ternary "on" "off" $v.git.probe.enabled) -}}
{{- $_ = set $s "RELAY_GIT_PROBE_WRITERS" ($v.git.probe.writers | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_PROBE_ROUNDS" ($v.git.probe.rounds | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_PROBE_DEADLINE_SECONDS" ($v.git.probe.deadlineSeconds | toString) -}}
{{- $_ = set $s "RELAY_GIT_PUBLIC_READ" ($v.git.publicRead | toString) -}}
{{- $_ = set $s "RELAY_GIT_MAX_REPOS_PER_PUBKEY" ($v.git.maxReposPerPubkey | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_MAX_PACK_BYTES" ($v.git.maxPackBytes | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_MAX_REPO_BYTES" ($v.git.maxRepoBytes | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_MAX_PROCESSES" ($v.git.maxProcesses | int64 | toString) -}}
{{- $_ = set $s "RELAY_GIT_TIMEOUT_SECONDS" ($v.git.timeoutSeconds | toString) -}}
{{- $_ = set $s "RELAY_GIT_RECONCILE_SECONDS" ($v.git.reconcileSeconds | toString) -}}
{{- $_ = set $s "RELAY_GIT_PROVISION" $v.git.provision -}}
{{- $_ = set $s "RELAY_GIT_PURGATORY_SECONDS" ($v.git.purgatorySeconds | toString) -}}
{{- $_ = set $s "RELAY_GIT_SCRATCH_DIR" $v.gitScratch.mountPath -}}
{{- range $key, $value := $v.extraConfig }}{{ $_ = set $s $key (toString $value) }}{{ end -}}
{{- range $key := keys $s | sortAlpha }}
{{ $key }}: {{ get $s $key | quote }}
{{- end -}}
{{- end -}}

{{/* Credentials: environment variables read from the referenced Secrets. */}}
{{- define "relay.secretEnv" -}}
{{- $v := .Values -}}
- name: RELAY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.existingSecret | quote }}
      key: {{ $v.database.key | quote }}
- name: RELAY_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.signingKey.existingSecret | quote }}
      key: {{ $v.signingKey.key | quote }}
{{- if $v.redis.existingSecret }}
- name: RELAY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret | quote }}
      key: {{ $v.redis.key | quote }}
{{- end }}
{{- if not $v.s3.endpoint }}
- name: RELAY_S3_ENDPOINT
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.existingSecret | quote }}
      key: {{ $v.s3.endpointKey | quote }}
{{- end }}
{{- if not $v.s3.bucket }}
- name: RELAY_S3_BUCKET
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.existingSecret | quote }}
      key: {{ $v.s3.bucketKey | quote }}
{{- end }}
{{- if not $v.s3.unsigned }}
- name: RELAY_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.existingSecret | quote }}
      key: {{ $v.s3.accessKeyKey | quote }}
- name: RELAY_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.s3.existingSecret | quote }}
      key: {{ $v.s3.secretKeyKey | quote }}
{{- end }}
{{- end -}}

{{/* The pod-level pieces the Deployment and the migration Job share. */}}
{{- define "relay.podCommon" -}}
serviceAccountName: {{ include "relay.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
