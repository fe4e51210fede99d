variable "project_id" {
  description = "GCP project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the cluster and the bucket."
  type        = string
  default     = "us-central1"
}

variable "gpu_zones" {
  description = "Zones of the region that offer gpu_type (check: gcloud compute accelerator-types list --filter=name=nvidia-l4)."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-c"]
}

variable "cluster_name" {
  description = "Name of the GKE cluster."
  type        = string
  default     = "biofleet"
}

variable "machine_type" {
  description = "Machine type of the GPU nodes: g2-standard-4 (1 x L4, 4 vCPU, 16 GB) fits one worker."
  type        = string
  default     = "g2-standard-4"
}

variable "gpu_type" {
  description = "Accelerator attached to each GPU node: nvidia-l4 (with g2), or nvidia-tesla-t4 (with n1-standard-4)."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per node; the worker Deployment asks for one per pod."
  type        = number
  default     = 1
}

variable "max_gpu_nodes" {
  description = "Most GPU nodes in the pool, over all zones; keep it at or above the ScaledObject's maxReplicaCount (8)."
  type        = number
  default     = 8
}

variable "spot" {
  description = "Spot GPU nodes: cheaper, can be reclaimed with 30 s notice (a batch in flight is then redone)."
  type        = bool
  default     = false
}

variable "system_machine_type" {
  description = "Machine type of the CPU pool (API, Flower, KEDA)."
  type        = string
  default     = "e2-standard-4"
}

variable "retention_days" {
  description = "Days an image is kept in the bucket (enrollment images; probes are deleted when their job is final)."
  type        = number
  default     = 365
}
