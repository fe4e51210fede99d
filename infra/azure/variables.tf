variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "location" {
  description = "Region of every resource; pick one that offers gpu_vm_size (az vm list-skus --location REGION --size Standard_NC --output table)."
  type        = string
  default     = "westeurope"
}

variable "name" {
  description = "Prefix of resource names (resource group, cluster, Redis, Postgres); lower-case letters and digits."
  type        = string
  default     = "biofleet"
}

variable "kubernetes_version" {
  description = "AKS Kubernetes version; null takes the region's default."
  type        = string
  default     = null
}

variable "system_vm_size" {
  description = "VM size of the system node pool (API, exporter, Flower, callback dispatcher, KEDA)."
  type        = string
  default     = "Standard_D4s_v5"
}

variable "system_node_count" {
  description = "Nodes in the system pool."
  type        = number
  default     = 2
}

variable "gpu_vm_size" {
  description = "VM size of the GPU nodes, one worker each: Standard_NC4as_T4_v3 (1 x T4, 4 vCPU, 28 GiB) or Standard_NV36ads_A10_v5 (1 x A10)."
  type        = string
  default     = "Standard_NC4as_T4_v3"
}

variable "max_gpu_nodes" {
  description = "Most GPU nodes in the pool; keep it at or above the ScaledObject's maxReplicaCount (8)."
  type        = number
  default     = 8
}

variable "gpu_spot" {
  description = "Spot GPU nodes: cheaper, can be evicted with 30 s notice (a batch in flight is then redone)."
  type        = bool
  default     = false
}

variable "redis_sku" {
  description = "Azure Cache for Redis tier: Standard (replicated) or Premium (adds persistence)."
  type        = string
  default     = "Standard"
}

variable "redis_capacity" {
  description = "Azure Cache for Redis size within its family (1 = C1, 1 GB): messages carry blob keys only, so a small cache holds a deep queue."
  type        = number
  default     = 1
}

variable "postgres_sku" {
  description = "Azure Database for PostgreSQL flexible server SKU."
  type        = string
  default     = "GP_Standard_D2ds_v5"
}

variable "postgres_storage_mb" {
  description = "Postgres storage in MB."
  type        = number
  default     = 65536
}

variable "postgres_admin_login" {
  description = "Postgres administrator login."
  type        = string
  default     = "biofleet"
}

variable "postgres_admin_password" {
  description = "Postgres administrator password (pass it with TF_VAR_postgres_admin_password, never in a file)."
  type        = string
  sensitive   = true
}

variable "retention_days" {
  description = "Days after which the storage account deletes blobs (a backstop to biofleet's own retention)."
  type        = number
  default     = 365
}
